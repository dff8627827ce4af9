"""Breaking images on purpose: bytes patched in place, and the pclusters and dirents worth patching."""

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


def file_position(img: ErofsImage, ino: Inode, la: int) -> int:
    """Where byte ``la`` of an uncompressed inode lies in the primary file."""
    ext = img.extent_at(ino, la)
    assert ext.placement in (Placement.DEVICE, Placement.METADATA)
    pos = ext.pa + (la - ext.la)
    if ext.placement is Placement.DEVICE:
        dev, pos = img.devices.locate(pos, ext.device_id)
        assert dev is img.devices.primary
    return pos


def find_dirent(img: ErofsImage, want) -> tuple[bytes, Inode, list, int]:
    """The first directory (path, inode, block entries, index) whose entry ``i`` of block 0 satisfies ``want``."""
    for path, ino in img.walk():
        if ino.is_dir and not ino.compressed:
            entries = img.dirent_block(ino, 0)
            for i in range(len(entries)):
                if want(img, entries, i):
                    return path, ino, entries, i
    raise LookupError("no such directory entry")


def rewrite_dirent(path: str, img: ErofsImage, dir_ino: Inode, entry, *, nid=None, nameoff=None) -> int:
    """Change one dirent's nid or name offset in the image file; returns its position."""
    pos = file_position(img, dir_ino, entry.offset)
    old_nid, old_nameoff, ftype = d.DIRENT.unpack(read_at(path, pos, d.DIRENT.size))
    assert old_nid == entry.nid  # the bytes found really are this dirent
    patch(path, pos, d.DIRENT.pack(old_nid if nid is None else nid, old_nameoff if nameoff is None else nameoff, ftype))
    reseal_superblock(path)  # the checksum covers the first block, which may hold this dirent
    return pos
