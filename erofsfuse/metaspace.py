"""Byte-addressed metadata spaces with a shared block cache.

EROFS metadata (inodes, inline data, indexes, xattrs) normally lives on the
primary device. With the metabox feature, inodes whose nid has bit 63 set
live inside the data of the metabox inode instead, which may itself be
compressed. Both are exposed here as the same interface: ``read(pos, n)``.
"""

from __future__ import annotations

from collections.abc import Callable

from .cache import SizedLRU
from .errors import CorruptImage


class MetaSpace:
    """Metadata addressed by byte position, fetched and cached a block at a time."""

    def __init__(
        self, name: str, blkszbits: int, size: int, fetch: Callable[[int, int], bytes], cache: SizedLRU[bytes]
    ):
        self.name = name
        self.blkszbits = blkszbits
        self.block_size = 1 << blkszbits
        self.size = size
        self._fetch = fetch
        self._cache = cache

    def block(self, blkno: int) -> bytes:
        """Block ``blkno`` (shorter than a block only at the end of the space)."""
        key = (self.name, blkno)
        data = self._cache.get(key)
        if data is None:
            start = blkno << self.blkszbits
            if start >= self.size:
                raise CorruptImage(f"metadata block {blkno} is past the end of the {self.name} ({self.size} bytes)")
            data = self._cache.put(key, self._fetch(start, min(self.block_size, self.size - start)))
        return data

    def read(self, pos: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``pos``, across block boundaries if needed."""
        bits = self.blkszbits
        mask = self.block_size - 1
        blkno = pos >> bits
        off = pos & mask
        block = self.block(blkno)
        if off + length <= len(block):
            return block[off : off + length]
        if pos + length > self.size or pos < 0:
            raise CorruptImage(f"metadata read of {length} bytes at {pos} is past the end of the {self.name}")
        parts = [block[off:]]
        got = len(parts[0])
        while got < length:
            blkno += 1
            block = self.block(blkno)
            parts.append(block[: length - got])
            got += len(parts[-1])
        return b"".join(parts)
