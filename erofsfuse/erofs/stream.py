"""Reading a whole file a chunk at a time, with holes optionally skipped.

Extraction and checking must cost what an image stores, not what it
claims: a sparse file may be far larger than the image holding it, and a
corrupt inode may claim any size at all. Skipping holes by their mapping
(without reading them) bounds both; ``cat`` still gets every byte.
"""

from __future__ import annotations

from collections.abc import Iterator

from . import _zmap
from .data import HOLE
from .errors import CorruptImage
from .image import ErofsImage
from .inode import Inode

CHUNK = 1 << 20


def chunks(img: ErofsImage, ino: Inode, size: int = CHUNK, *, skip_holes: bool = False) -> Iterator[tuple[int, bytes]]:
    """``(offset, data)`` pieces of at most ``size`` bytes covering the file (or all but its holes)."""
    offset = 0
    while offset < ino.size:
        if skip_holes:
            end = hole_end(img, ino, offset)
            if end is not None:
                offset = end
                continue
        want = min(size, ino.size - offset)
        data = img.read(ino, offset, want)
        if len(data) != want:
            raise CorruptImage(f"short read: {len(data)} of {want} bytes", ino.nid, f"offset {offset}")
        yield offset, data
        offset += want


def hole_end(img: ErofsImage, ino: Inode, offset: int) -> int | None:
    """Where the hole at ``offset`` ends, or None when data is stored there."""
    try:
        if ino.compressed:
            la, llen, _, _, _, flags = img.reader.compressed_map(ino).map(offset)
            stored = flags & (_zmap.MAPPED | _zmap.FRAGMENT)
            end = la + llen
        else:
            ext = img.reader.map_plain(ino, offset)
            stored = ext.kind != HOLE
            end = ext.la + ext.llen
    except CorruptImage as exc:
        raise exc.at(ino.nid, f"offset {offset}") from None
    if stored:
        return None
    if end <= offset:
        raise CorruptImage("a hole that maps no bytes", ino.nid, f"offset {offset}")
    return min(end, ino.size)
