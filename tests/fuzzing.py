"""A structure-aware mutation fuzzer for the EROFS decoder.

Seeds are corpus images. Mutations land mostly on metadata the library
decoded from the seed (superblock, device table, inodes, xattr areas,
directory blocks, compression indexes, pcluster heads, chunk indexes), plus
truncation. Each mutated image is driven through every path: superblock,
inodes, directory listing and lookup, xattrs, symlinks and every byte of
every file. The property: every operation ends in data or a typed
``ErofsError``; an uncaught exception, a hang (an operation using more than
``--op-seconds`` of CPU time, so that a loaded or paused machine does not
count) or memory beyond ``--memory-mib`` is a finding.

Findings are saved as patch lists against their seed (``--out``), minimised,
ready to become regression tests (``tests/data/fuzz_regressions.json``).

    python -m tests.fuzzing --inputs 100000 --jobs 2     # the long run
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from erofsfuse.erofs import ondisk as d
from erofsfuse.erofs.data import Placement
from erofsfuse.erofs.errors import ErofsError
from erofsfuse.erofs.image import ErofsImage
from erofsfuse.fuse.tree import ImageTree, Node

from . import corpus

INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x10, 0x20, 0x40]
INTERESTING_WORDS = [0, 1, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 4096, 4095, 12, 13]
SEED_MAX_BYTES = 1_300_000


class Hang(Exception):
    pass


def seed_names() -> list[str]:
    """Corpus images small enough to fuzz quickly (every feature family is among them)."""
    return [e["name"] for e in corpus.images() if e["size"] + e.get("devices_size", 0) <= SEED_MAX_BYTES]


@functools.cache
def seeds() -> list[tuple[str, bytes, list[tuple[int, int]]]]:
    """``(name, image bytes, metadata ranges)`` of every seed image (read once per process)."""
    out = []
    for name in seed_names():
        with ErofsImage(corpus.image_path(name), corpus.device_paths(name)) as img:
            ranges = _ranges_of(img)
        out.append((name, Path(corpus.image_path(name)).read_bytes(), ranges))
    return out


def _ranges_of(img: ErofsImage) -> list[tuple[int, int]]:
    """Byte ranges of the primary device that hold metadata the library read."""
    bits = img.sb.blkszbits
    ranges = [(d.SUPER_OFFSET, d.SUPERBLOCK.size + 256)]
    if img.sb.extra_devices:
        ranges.append((img.sb.devt_slotoff * d.DEVICE_SLOT.size, d.DEVICE_SLOT.size * img.sb.extra_devices))
    if img.sb.xattr_blkaddr:
        ranges.append((img.sb.xattr_blkaddr << bits, 256))
    for _, ino in img.walk():
        if ino.space is not img.meta:
            continue
        ranges.append((ino.iloc, ino.isize + ino.xattr_isize + 64))
        if ino.is_dir and ino.startblk != d.NULL_ADDR and not ino.compressed:
            ranges.append((ino.startblk << bits, min(ino.size, 1 << bits)))
        if ino.compressed and ino.size:
            first = img.extent_at(ino, 0)
            ranges.append((d.round_up(ino.data_start, 8), 64))
            if first.placement is Placement.DEVICE and first.plen:
                ranges.append((first.pa, min(first.plen, 64)))
    return ranges


def mutate(data: bytearray, ranges: list[tuple[int, int]], rng: random.Random) -> tuple[list, int | None]:
    """Apply a few mutations; returns the patches (offset, new bytes) and an optional truncation."""
    patches = []
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        if ranges and rng.random() < 0.9:
            start, length = rng.choice(ranges)
            pos = start + rng.randrange(max(length, 1))
        else:
            pos = rng.randrange(len(data))
        if pos >= len(data):
            continue
        kind = rng.random()
        if kind < 0.35:
            new = bytes([data[pos] ^ (1 << rng.randrange(8))])
        elif kind < 0.6:
            new = bytes([rng.choice(INTERESTING)])
        elif kind < 0.8:
            new = rng.choice(INTERESTING_WORDS).to_bytes(4, "little")[: rng.choice((2, 4))]
        else:
            new = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        new = new[: len(data) - pos]
        data[pos : pos + len(new)] = new
        patches.append((pos, new.hex()))
    truncate = None
    if rng.random() < 0.03:
        truncate = rng.randrange(len(data))
        del data[truncate:]
    return patches, truncate


def exercise(path: str, devices: list[str], op_seconds: float) -> None:
    """Drive every path of the library over one image; only typed errors may escape each step."""

    def guarded(call):
        signal.setitimer(signal.ITIMER_PROF, op_seconds)
        try:
            return call()
        except ErofsError:
            return None
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)

    img = guarded(lambda: ErofsImage(path, devices))
    if img is None:
        return
    try:
        walk = img.walk()
        for _ in range(20_000):
            item = guarded(lambda: next(walk, None))
            if item is None:
                return
            for call in _operations(img, item[1]):
                guarded(call)
    finally:
        img.close()


def _operations(img: ErofsImage, ino) -> list:
    """Everything a reader may ask about one inode."""
    calls = [lambda: img.stat(ino), lambda: img.xattrs(ino), lambda: img.getxattr(ino, b"user.x"),
             lambda: _read_all(img, ino)]
    if ino.is_symlink:
        calls.append(lambda: img.readlink(ino))
    if ino.is_dir:
        calls.append(lambda: [img.lookup(ino, e.name) for e in itertools.islice(img.entries(ino), 64)])
        calls.append(lambda: img.lookup(ino, b"no-such-name"))
        node = Node(ino.nid + 2, ((img, ino),))  # a FUSE listing of names only, straight from the dirents
        calls.append(lambda: list(itertools.islice(ImageTree(img).listing(node, 0), 256)))
    return calls


def _read_all(img: ErofsImage, ino) -> None:
    if ino.is_reg or ino.is_dir or ino.is_symlink:
        end = min(ino.size, 64 << 20)
        for off in range(0, end, 1 << 20):
            img.read(ino, off, 1 << 20)
        if ino.size:
            img.read(ino, ino.size - 1, 4096)


def _alarm(signum, frame):
    raise Hang("operation took too long")


def worker(job: int, inputs: int, seed: int, out: str, op_seconds: float, memory_mib: int, queue) -> None:
    """Fuzz ``inputs`` inputs; report (inputs done, findings) through ``queue``."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_mib << 20, memory_mib << 20))
    signal.signal(signal.SIGPROF, _alarm)
    rng = random.Random(seed * 1000 + job)
    scratch = tempfile.mkdtemp(prefix="erofs-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    target = os.path.join(scratch, "image.erofs")
    done = findings = 0
    try:
        for _ in range(inputs):
            name, original, ranges = rng.choice(seeds())
            data = bytearray(original)
            patches, truncate = mutate(data, ranges, rng)
            Path(target).write_bytes(data)
            try:
                exercise(target, corpus.device_paths(name), op_seconds)
            except (Exception, Hang) as exc:  # everything not typed is a finding
                findings += 1
                record = {"seed": name, "seed_sha256": hashlib.sha256(original).hexdigest(),
                          "patches": patches, "truncate": truncate,
                          "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                record = minimise(record, op_seconds)
                out_path = Path(out) / f"finding-{job}-{done}.json"
                out_path.write_text(json.dumps(record, indent=1))
            done += 1
            if done % 50 == 0:
                queue.put((job, 50, 0))
    finally:
        queue.put((job, done % 50, findings))
        for f in Path(scratch).iterdir():
            f.unlink()
        os.rmdir(scratch)


def apply(record: dict) -> bytes:
    """The input a record describes: its seed image with the patches (and truncation) applied.

    The seed's digest is checked first: patches made for other bytes would quietly test nothing.
    """
    data = bytearray(Path(corpus.image_path(record["seed"])).read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != record["seed_sha256"]:
        raise ValueError(f"seed image {record['seed']} has changed since the record was made ({digest})")
    patches, truncate = record["patches"], record["truncate"]
    for pos, hexed in patches:
        new = bytes.fromhex(hexed)
        data[pos : pos + len(new)] = new
    if truncate is not None:
        del data[truncate:]
    return bytes(data)


def reproduces(record: dict, op_seconds: float) -> str | None:
    """Run a recorded input; the untyped error it raises, if any."""
    signal.signal(signal.SIGPROF, _alarm)
    with tempfile.NamedTemporaryFile(suffix=".erofs") as f:
        f.write(apply(record))
        f.flush()
        try:
            exercise(f.name, corpus.device_paths(record["seed"]), op_seconds)
        except (Exception, Hang) as exc:
            return f"{type(exc).__name__}: {exc}"
    return None


def minimise(record: dict, op_seconds: float) -> dict:
    """Drop the patches (and truncation) that the finding does not need."""
    kind = record["error"].split(":", 1)[0]
    for i in reversed(range(len(record["patches"]))):
        trial = dict(record, patches=record["patches"][:i] + record["patches"][i + 1 :])
        found = reproduces(trial, op_seconds)
        if found and found.split(":", 1)[0] == kind:
            record = trial
    if record["truncate"] is not None:
        trial = dict(record, truncate=None)
        found = reproduces(trial, op_seconds)
        if found and found.split(":", 1)[0] == kind:
            record = trial
    return record


def run(inputs: int, jobs: int, seed: int, out: str, op_seconds: float = 2.0, memory_mib: int = 1536,
        progress: bool = True) -> int:
    """Fuzz ``inputs`` inputs over ``jobs`` processes; returns the number of findings."""
    os.makedirs(out, exist_ok=True)
    queue = multiprocessing.Queue()
    share = [inputs // jobs + (1 if i < inputs % jobs else 0) for i in range(jobs)]
    procs = [multiprocessing.Process(target=worker, args=(i, share[i], seed, out, op_seconds, memory_mib, queue))
             for i in range(jobs)]
    for p in procs:
        p.start()
    total = findings = 0
    started = time.monotonic()
    while any(p.is_alive() for p in procs) or not queue.empty():
        try:
            _, count, found = queue.get(timeout=1)
        except Exception:  # queue.Empty: just look at the workers again
            continue
        total += count
        findings += found
        if progress:
            rate = total / max(time.monotonic() - started, 1e-9)
            print(f"\r{total}/{inputs} inputs, {findings} findings, {rate:.0f}/s", end="", file=sys.stderr)
    for p in procs:
        p.join()
        if p.exitcode:
            findings += 1
            print(f"\nworker {p.pid} died with exit code {p.exitcode}", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzzing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--out", default="fuzz-findings")
    parser.add_argument("--op-seconds", type=float, default=2.0)
    parser.add_argument("--memory-mib", type=int, default=1536)
    args = parser.parse_args(argv)
    print(f"fuzzing {args.inputs} inputs with seed {args.seed} over {args.jobs} jobs; findings go to {args.out}",
          file=sys.stderr)
    findings = run(args.inputs, args.jobs, args.seed, args.out, args.op_seconds, args.memory_mib)
    print(f"{findings} findings", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
