"""Byte-addressed metadata spaces, each with its own cache of aligned chunks.

EROFS metadata (inodes, inline data, indexes, xattrs) normally lives on the
primary device. With the metabox feature, inodes whose nid has bit 63 set
live inside the data of the metabox inode instead, which may itself be
compressed. Both are exposed here as the same interface: ``read(pos, n)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from .errors import CorruptImage, ErofsError

CHUNK_BITS = 12  # metadata is cached a page at a time
# A miss on the page right after the previous miss reads this many pages at once: a walk that stats every
# file (ls -l, a container start through overlayfs) reads inodes in order and gets its neighbours along,
# while one that reads a single inode per directory (find) pays for one page each, as the kernel does.
READ_AHEAD_CHUNKS = 16


class MetaSpace:
    """Metadata addressed by byte position, fetched and cached in aligned chunks."""

    def __init__(self, name: str, blkszbits: int, size: int, fetch: Callable[[int, int], bytes], cache_bytes: int):
        self.name = name
        self.blkszbits = blkszbits
        self.chunk_bits = max(CHUNK_BITS, blkszbits)
        self.size = size
        self._fetch = fetch
        # functools' LRU is implemented in C: metadata is read on every lookup and readdir
        self.chunk = functools.lru_cache(maxsize=max(cache_bytes >> self.chunk_bits, 8))(self._load_chunk)
        self._ahead: dict[int, bytes] = {}  # chunks read ahead, handed to the cache on their first use
        self._last_miss = -2

    def _load_chunk(self, index: int) -> bytes:
        data = self._ahead.pop(index, None)
        sequential = index == self._last_miss + 1
        self._last_miss = index
        if data is not None:
            return data
        start = index << self.chunk_bits
        if start >= self.size or start < 0:
            raise CorruptImage(f"metadata at {start} is past the end of the {self.name} ({self.size} bytes)")
        size = 1 << self.chunk_bits
        if sequential:
            try:
                data = self._fetch(start, min(READ_AHEAD_CHUNKS * size, self.size - start))
            except ErofsError:
                pass  # something further on is unreadable: fetch just the chunk asked for
            else:
                if len(self._ahead) > 4 * READ_AHEAD_CHUNKS:
                    self._ahead.clear()  # read ahead and never used: the walk went elsewhere
                for i in range(1, (len(data) + size - 1) // size):
                    self._ahead[index + i] = data[i * size : (i + 1) * size]
                return data[:size]
        return self._fetch(start, min(size, self.size - start))

    def read(self, pos: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``pos``, across chunk boundaries if needed."""
        bits = self.chunk_bits
        off = pos & ((1 << bits) - 1)
        chunk = self.chunk(pos >> bits)
        if off + length <= len(chunk):
            return chunk[off : off + length]
        if pos + length > self.size or pos < 0:
            raise CorruptImage(f"metadata read of {length} bytes at {pos} is past the end of the {self.name}")
        index = pos >> bits
        parts = [chunk[off:]]
        got = len(parts[0])
        while got < length:
            index += 1
            chunk = self.chunk(index)
            parts.append(chunk[: length - got])
            got += len(parts[-1])
        return b"".join(parts)
