"""Breaking images on purpose: bytes patched in place, and the pclusters worth patching."""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from erofsfuse.erofs import ondisk as d
from erofsfuse.erofs.data import CompressedExtent, Placement
from erofsfuse.erofs.image import ErofsImage
from erofsfuse.erofs.inode import Inode
from erofsfuse.erofs.superblock import kernel_crc32c

from . import corpus


def stored_pclusters(img: ErofsImage) -> Iterator[tuple[bytes, Inode, CompressedExtent]]:
    """``(path, inode, extent)`` for every pcluster of a compressed file that lies on the device (not inline)."""
    for path, ino in img.walk():
        if ino.is_reg and ino.compressed and ino.size:
            for ext in img.extents(ino):
                if ext.placement is Placement.DEVICE:
                    yield path, ino, ext


def largest_pcluster(img: ErofsImage, accept: Callable[[CompressedExtent], bool] = lambda ext: True,
                     ) -> tuple[bytes, Inode, CompressedExtent]:
    """The largest stored pcluster among those ``accept`` takes (the first such if several tie)."""
    found = [candidate for candidate in stored_pclusters(img) if accept(candidate[2])]
    assert found, "the image has no stored pcluster of the kind asked for"
    return max(found, key=lambda candidate: candidate[2].plen)


def patch(path: str | Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def copy_image(name: str, tmp_path) -> str:
    path = str(tmp_path / f"{name}.erofs")
    shutil.copyfile(corpus.image_path(name), path)
    return path


def read_at(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), length, offset)


def superblock_offset(field: str) -> int:
    """Byte offset of a superblock field in the file, from the library's own structure definition."""
    offset = d.SUPER_OFFSET
    names = iter(d.SUPERBLOCK_FIELDS)
    for code in d.SUPERBLOCK.format.lstrip("<").split():
        if not code.endswith("x") and next(names) == field:
            return offset
        offset += struct.calcsize("<" + code)
    raise KeyError(field)


def superblock_field(path: str, field: str) -> int:
    offset = superblock_offset(field)
    code = d.SUPERBLOCK.format.lstrip("<").split()[d.SUPERBLOCK_FIELDS.index(field)]
    return struct.unpack("<" + code, read_at(path, offset, struct.calcsize("<" + code)))[0]


def reseal_superblock(path: str) -> None:
    """Store a checksum that fits the changed block again, so that only the intended change is wrong."""
    if not superblock_field(path, "feature_compat") & d.COMPAT_SB_CHKSUM:
        return
    block = 1 << superblock_field(path, "blkszbits")
    start = d.SUPER_OFFSET
    area = bytearray(read_at(path, start, block - start if block > start else block))
    area[d.SUPERBLOCK_CHECKSUM_OFFSET : d.SUPERBLOCK_CHECKSUM_OFFSET + 4] = bytes(4)
    patch(path, superblock_offset("checksum"), struct.pack("<I", kernel_crc32c(bytes(area))))
