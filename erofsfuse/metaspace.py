"""Byte-addressed metadata spaces with a shared block cache.

EROFS metadata (inodes, inline data, indexes, xattrs) normally lives on the
primary device. With the metabox feature, inodes whose nid has bit 63 set
live inside the data of the metabox inode instead, which may itself be
compressed. Both are exposed here as the same interface: ``read(pos, n)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from .errors import CorruptImage


class MetaSpace:
    """Metadata addressed by byte position, fetched and cached a block at a time."""

    def __init__(self, name: str, blkszbits: int, size: int, fetch: Callable[[int, int], bytes], cache_bytes: int):
        self.name = name
        self.blkszbits = blkszbits
        self.block_size = 1 << blkszbits
        self.size = size
        self._fetch = fetch
        # functools' LRU is implemented in C: metadata blocks are read on every lookup and readdir
        self.block = functools.lru_cache(maxsize=max(cache_bytes >> blkszbits, 16))(self._load_block)

    def _load_block(self, blkno: int) -> bytes:
        """Block ``blkno`` (shorter than a block only at the end of the space)."""
        start = blkno << self.blkszbits
        if start >= self.size or start < 0:
            raise CorruptImage(f"metadata block {blkno} is past the end of the {self.name} ({self.size} bytes)")
        return self._fetch(start, min(self.block_size, self.size - start))

    def read(self, pos: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``pos``, across block boundaries if needed."""
        bits = self.blkszbits
        off = pos & (self.block_size - 1)
        block = self.block(pos >> bits)
        if off + length <= len(block):
            return block[off : off + length]
        if pos + length > self.size or pos < 0:
            raise CorruptImage(f"metadata read of {length} bytes at {pos} is past the end of the {self.name}")
        blkno = pos >> bits
        parts = [block[off:]]
        got = len(parts[0])
        while got < length:
            blkno += 1
            block = self.block(blkno)
            parts.append(block[: length - got])
            got += len(parts[-1])
        return b"".join(parts)
