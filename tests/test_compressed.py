"""Compressed files: range reads at pcluster boundaries, hostile streams, bounded memory."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import lz4.block
import pytest
import pyzstd

from erofsfuse.erofs import data as data_module
from erofsfuse.erofs import ondisk as d
from erofsfuse.erofs.errors import CorruptImage
from erofsfuse.erofs.image import ErofsImage

from . import corpus
from .damage import largest_pcluster, patch

COMPRESSED = corpus.image_names(corpus.is_compressed)


def probe_ranges(size: int, bounds: list[int], rng: random.Random) -> list[tuple[int, int]]:
    """Ranges that start and end on, just before and just after extent boundaries, inside and across them."""
    ranges = [(0, size)]
    for b in rng.sample(bounds, min(len(bounds), 12)):
        for start in (b - 1, b, b + 1, b - 4096):
            for length in (1, 4097, 70_000):
                if 0 <= start < size:
                    ranges.append((start, length))
                if 0 <= start - length < size:
                    ranges.append((start - length, length))
    for _ in range(10):
        start = rng.randrange(size)
        ranges.append((start, rng.randrange(1, 300_000)))
    return ranges


@pytest.mark.parametrize("name", COMPRESSED)
def test_range_reads_match_whole_file(name):
    """Every range read, through a small pcluster cache, equals the same slice of the whole (manifest-checked) file."""
    m = corpus.manifest(name)["entries"]
    rng = random.Random(name)
    devices = corpus.device_paths(name)
    with (ErofsImage(corpus.image_path(name), devices) as whole,
          ErofsImage(corpus.image_path(name), devices, cache_bytes=256 << 10) as fresh):
        checked = 0
        for path, ino in whole.walk():
            if not (ino.is_reg and ino.compressed and ino.size):
                continue
            content = whole.read(ino, 0, ino.size)
            assert hashlib.sha256(content).hexdigest() == m[os.fsdecode(path)]["sha256"]
            bounds = sorted({b for la, llen, *_ in whole.extents(ino) for b in (la, la + llen)})
            fino = fresh.inode(ino.nid)
            for start, length in probe_ranges(ino.size, bounds, rng):
                assert fresh.read(fino, start, length) == content[start : start + length], (path, start, length)
            checked += 1
        assert checked


@pytest.mark.parametrize("name", COMPRESSED)
@pytest.mark.parametrize("chunk", [4096, 100_000, 1 << 20])
def test_sequential_reads_decode_each_pcluster_once(monkeypatch, name, chunk):
    """Reading files front to back in chunks (aligned or not) decodes no pcluster twice: an extent that a chunk
    only partly covers is kept for the next one, and the content still matches the manifest."""
    m = corpus.manifest(name)["entries"]
    decoded: dict[tuple, int] = {}
    real = data_module.decompress

    def counting(algorithm, src, outlen, **kw):
        key = (algorithm, hashlib.sha256(src).digest(), outlen, kw["la"])
        decoded[key] = decoded.get(key, 0) + 1
        return real(algorithm, src, outlen, **kw)

    monkeypatch.setattr(data_module, "decompress", counting)
    files = 0
    with ErofsImage(corpus.image_path(name), corpus.device_paths(name)) as img:
        for path, ino in img.walk():
            if not (ino.is_reg and ino.compressed and ino.size):
                continue
            decoded.clear()  # files may share pclusters (dedupe): count per file
            content = b"".join(img.read(ino, pos, chunk) for pos in range(0, ino.size, chunk))
            assert hashlib.sha256(content).hexdigest() == m[os.fsdecode(path)]["sha256"], path
            twice = [key for key, n in decoded.items() if n > 1]
            assert not twice, f"{path}: {len(twice)} of {len(decoded)} pclusters decoded more than once"
            files += bool(decoded)
    assert files


def _replace_pcluster(src: str, dst: Path, stream_for) -> tuple[int, int]:
    """Copy ``src`` with the largest LZ4/Zstd pcluster replaced by ``stream_for(llen)``, zero-padded in front."""
    shutil.copyfile(src, dst)
    with ErofsImage(src) as img:
        alg = d.COMPRESSION_ZSTD if img.sb.available_algorithms & (1 << d.COMPRESSION_ZSTD) else d.COMPRESSION_LZ4
        _, ino, (la, llen, pa, plen, _, _) = largest_pcluster(
            img, lambda ext: ext.algorithm == alg and not ext.partial)
        stream = stream_for(llen, alg)
        assert len(stream) <= plen, "the replacement must fit the pcluster"
    patch(dst, pa, bytes(plen - len(stream)) + stream)
    return ino.nid, la


def _compress(payload: bytes, alg: int) -> bytes:
    if alg == d.COMPRESSION_LZ4:
        return lz4.block.compress(payload, store_size=False)
    return pyzstd.compress(payload)


@pytest.mark.parametrize("name", ["lz4hc-C64k-legacy", "zstd"])
@pytest.mark.parametrize("kind", ["shorter", "longer", "bomb"])
def test_stream_that_disagrees_with_the_map_is_eio(tmp_path, name, kind):
    """A valid stream of the wrong decoded size (shorter, longer, a bomb) gives CorruptImage naming nid and offset."""

    def stream_for(llen: int, alg: int) -> bytes:
        size = {"shorter": llen - 1000, "longer": llen + 1000, "bomb": 64 << 20}[kind]
        if alg == d.COMPRESSION_LZ4 and kind == "bomb":
            size = 200 * 8192  # the most LZ4 packs into a small pcluster (about 255:1)
        return _compress(b"x" * size, alg)

    bad = tmp_path / "bad.erofs"
    nid, la = _replace_pcluster(corpus.image_path(name), bad, stream_for)
    with ErofsImage(str(bad)) as img:
        ino = img.inode(nid)
        with pytest.raises(CorruptImage) as info:
            img.read(ino, la, ino.size)
    message = str(info.value)
    assert f"nid {nid}" in message and "offset" in message


def test_index_pointing_past_the_device_is_eio(tmp_path):
    """A full (legacy) index whose HEAD blkaddr points past the image: EIO naming the inode."""
    name = "lz4-legacy"
    data = bytearray(Path(corpus.image_path(name)).read_bytes())
    with ErofsImage(corpus.image_path(name)) as img:
        ino = next(i for _, i in img.walk() if i.is_reg and i.layout == d.LAYOUT_COMPRESSED_FULL and i.size > 8192)
        index_start = d.round_up(ino.data_start, 8) + d.MAP_HEADER.size + 8
        advise, clusterofs, _ = d.LCLUSTER_INDEX.unpack_from(data, index_start)
        assert advise & 3 != d.LCLUSTER_TYPE_NONHEAD
        d.LCLUSTER_INDEX.pack_into(data, index_start, advise, clusterofs, len(data) // img.sb.block_size + 1000)
        nid = ino.nid
    bad = tmp_path / "bad.erofs"
    bad.write_bytes(bytes(data))
    with ErofsImage(str(bad)) as img, pytest.raises(CorruptImage) as info:
        img.read(img.inode(nid), 0, 4096)
    assert f"nid {nid}" in str(info.value) and "past the end" in str(info.value)


MEMORY_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    from erofsfuse.erofs.image import ErofsImage

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    img = ErofsImage(sys.argv[1])
    ino = img.resolve("/big")
    before = hwm()
    digest = hashlib.sha256()
    for off in range(0, ino.size, 1 << 20):
        digest.update(img.read(ino, off, 1 << 20))
    print(digest.hexdigest(), hwm() - before)
""")


@pytest.mark.slow
def test_reading_a_1gib_compressed_file_keeps_memory_bounded(tmp_path):
    """Peak RSS grows by at most the pcluster cache (32 MiB by default) plus slack while reading 1 GiB."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(3)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randrange(2, 9))) for _ in range(2000)]
    chunk = b"\n".join(b" ".join(rng.choices(words, k=12)) for _ in range(60_000))[: 4 << 20]
    digest = hashlib.sha256()
    with open(src / "big", "wb") as f:
        for i in range(256):
            piece = b"%08d" % i + chunk[8:]
            f.write(piece)
            digest.update(piece)
    image = tmp_path / "big.erofs"
    subprocess.run(["mkfs.erofs", "-zlz4", "-C65536", str(image), str(src)], check=True, capture_output=True)
    (src / "big").unlink()
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(image)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    sha, growth = proc.stdout.split()
    assert sha == digest.hexdigest()
    assert int(growth) < 100 << 20, f"peak RSS grew by {int(growth) >> 20} MiB"
