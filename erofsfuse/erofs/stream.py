"""Reading a whole file a chunk at a time, with holes optionally skipped.

Extraction and checking must cost what an image stores, not what it
claims: a sparse file may be far larger than the image holding it, and a
corrupt inode may claim any size at all. Skipping holes by their mapping
(without reading them) bounds both; ``cat`` still gets every byte.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import CorruptImage
from .image import ErofsImage
from .inode import Inode

CHUNK = 1 << 20


def chunks(img: ErofsImage, ino: Inode, size: int = CHUNK, *, skip_holes: bool = False) -> Iterator[tuple[int, bytes]]:
    """``(offset, data)`` pieces of at most ``size`` bytes covering the file (or all but its holes)."""
    offset = 0
    while offset < ino.size:
        if skip_holes:
            end = img.hole_end(ino, offset)
            if end is not None:
                offset = end
                continue
        want = min(size, ino.size - offset)
        data = img.read(ino, offset, want)
        if len(data) != want:
            raise CorruptImage(f"short read: {len(data)} of {want} bytes", ino.nid, f"offset {offset}")
        yield offset, data
        offset += want
