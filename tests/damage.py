"""Breaking images on purpose: bytes patched in place, and the pclusters worth patching."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from erofsfuse.erofs import _zmap
from erofsfuse.erofs.image import ErofsImage
from erofsfuse.erofs.inode import Inode

Extent = tuple[int, int, int, int, int, int]  # la, llen, pa, plen, algorithm, flags, as the map gives them


def stored_pclusters(img: ErofsImage) -> Iterator[tuple[bytes, Inode, Extent]]:
    """``(path, inode, extent)`` for every pcluster of a compressed file that lies on the device (not inline)."""
    for path, ino in img.walk():
        if ino.is_reg and ino.compressed and ino.size:
            for ext in img.reader.compressed_map(ino).map_range(0, ino.size):
                if ext[5] & _zmap.MAPPED and not ext[5] & _zmap.INLINE:
                    yield path, ino, ext


def largest_pcluster(img: ErofsImage, accept: Callable[[Extent], bool] = lambda ext: True,
                     ) -> tuple[bytes, Inode, Extent]:
    """The largest stored pcluster among those ``accept`` takes (the first such if several tie)."""
    found = [candidate for candidate in stored_pclusters(img) if accept(candidate[2])]
    assert found, "the image has no stored pcluster of the kind asked for"
    return max(found, key=lambda candidate: candidate[2][3])


def patch(path: str | Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
