"""Deterministic benchmark data: one large mixed file and a tree of many small files.

Text chunks compress like prose and random chunks do not compress at all, so
compressed images get realistic ratios. Everything derives from a seed, so
every machine reads the same bytes; a data set is generated once into the
work directory and reused while its parameters (encoded in its name) match.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

KiB = 1 << 10
MiB = 1 << 20
GENERATOR_VERSION = 2  # bump when the bytes produced for a given seed change
FIXED_MTIME = 1_700_000_000  # same timestamps everywhere, so images do not depend on when data was made
TEXT_POOL_BYTES = 4 * MiB  # larger than any compression window, so slices of it compress like fresh text
LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
LETTER_WEIGHTS = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8,
                  2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.2, 0.2, 0.1, 0.1]


@dataclass(frozen=True)
class DataSet:
    """A generated directory that becomes one image per format."""

    kind: str  # "bigfile" or "smallfiles"
    path: Path
    files: int
    total_bytes: int
    big_file: str | None = None  # path of the large file, relative to ``path``

    @property
    def key(self) -> str:
        return self.path.name


def text_pool(rng: random.Random, size: int = TEXT_POOL_BYTES) -> bytes:
    """Prose-like ASCII: lines of words drawn from a Zipf-weighted vocabulary."""
    vocabulary = sorted({"".join(rng.choices(LETTERS, LETTER_WEIGHTS, k=rng.randint(1, 11))) for _ in range(6000)})
    rng.shuffle(vocabulary)
    cum_weights = list(accumulate(1.0 / (rank + 1) for rank in range(len(vocabulary))))
    words = rng.choices(vocabulary, cum_weights=cum_weights, k=size // 4)
    lines = (" ".join(words[i : i + 12]) + "." for i in range(0, len(words), 12))
    pool = "\n".join(lines).encode()
    while len(pool) < size:
        pool += pool
    return pool[:size]


def chunk(rng: random.Random, pool: bytes, size: int, text: bool) -> bytes:
    """``size`` bytes of text (a slice of the pool) or of random data."""
    if not text:
        return rng.randbytes(size)
    start = rng.randrange(len(pool) - size + 1)
    return pool[start : start + size]


def write_big_file(path: Path, size: int, seed: int) -> None:
    """Text and random chunks of 16 KiB to 1 MiB, a quarter of them random, ``size`` bytes in all (text
    compresses about 2:1, so decoding weighs on a compressed image's read as in a typical layer)."""
    rng = random.Random(seed)
    pool = text_pool(rng)
    written = 0
    with open(path, "wb") as out:
        while written < size:
            length = min(size - written, rng.randrange(16 * KiB, MiB + 1))
            out.write(chunk(rng, pool, length, text=rng.random() >= 0.25))
            written += length


def write_small_tree(root: Path, files: int, dirs: int, max_size: int, seed: int) -> int:
    """``files`` files of 0..max_size bytes spread over ``dirs`` directories; returns the bytes written."""
    rng = random.Random(seed)
    pool = text_pool(rng)
    total = 0
    for index in range(files):
        directory = root / f"dir{index % dirs:03d}"
        if index < dirs:
            directory.mkdir()
        text = rng.random() < 0.6
        size = rng.randrange(max_size + 1)
        path = directory / f"file{index // dirs:05d}.{'txt' if text else 'bin'}"
        path.write_bytes(chunk(rng, pool, size, text))
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))
        total += size
    return total


def fix_directory_times(root: Path) -> None:
    """Directory mtimes change as files are added; pin them once the tree is complete."""
    for directory, _, _ in os.walk(root):
        os.utime(directory, (FIXED_MTIME, FIXED_MTIME))


def generate(final: Path, fill: Callable[[Path], object]) -> None:
    """Build into a scratch directory and rename it into place, so a partial set is never reused."""
    if final.is_dir():
        return
    scratch = final.with_name(final.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    fill(scratch)
    fix_directory_times(scratch)
    scratch.rename(final)


def big_file_set(data_dir: Path, size: int, seed: int) -> DataSet:
    path = data_dir / f"bigfile-v{GENERATOR_VERSION}-{size // MiB}MiB-seed{seed}"
    generate(path, lambda scratch: write_big_file(scratch / "big.bin", size, seed))
    return DataSet("bigfile", path, 1, size, "big.bin")


def small_files_set(data_dir: Path, files: int, dirs: int, max_size: int, seed: int) -> DataSet:
    path = data_dir / f"smallfiles-v{GENERATOR_VERSION}-{files}x{max_size // KiB}KiB-in{dirs}-seed{seed}"
    generate(path, lambda scratch: write_small_tree(scratch, files, dirs, max_size, seed))
    total = sum(entry.stat().st_size for sub in path.iterdir() for entry in os.scandir(sub))
    return DataSet("smallfiles", path, files, total)
