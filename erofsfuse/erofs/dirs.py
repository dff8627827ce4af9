"""Directories: O(log n) lookup and resumable listing over sorted dirent blocks.

A directory's data is a sequence of blocks, each holding sorted dirents,
and the blocks themselves are in order. Lookup binary-searches the blocks by
their first name, then the names inside the one block that can hold the
target, as the kernel does. Listing positions are byte offsets of dirents
(``block * block_size + index * 12``), so a listing resumes in O(1).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import NamedTuple

from . import _dirents
from . import ondisk as d
from .cache import SizedLRU
from .errors import CorruptImage, ErofsError, NotADirectory
from .inode import Inode


class DirEntry(NamedTuple):
    name: bytes
    nid: int
    file_type: int
    offset: int  # position of this dirent; listing from ``offset + 1`` resumes after it


class Directories:
    """Directory access for one image, with caches of raw and of decoded directory blocks.

    A listing through FUSE asks for a directory block's dirents a few at a time (one reply page each), so
    the decoded blocks of the directories being listed are kept too: each block is decoded once per listing.
    """

    DECODED_BLOCKS = 64
    # A listing reads the directory's next blocks with one request (the kernel reads ahead the same way):
    # metadata reads land at scattered places, so the page cache of the image sees them as random and
    # would otherwise fetch each block with its own disk request.
    READ_AHEAD_BYTES = 128 << 10

    def __init__(self, blkszbits: int, read: Callable[[Inode, int, int], bytes], inode: Callable[[int], Inode],
                 cache_bytes: int):
        """``read(ino, offset, length)`` reads a directory's data, ``inode(nid)`` finds a directory by nid."""
        self._read = read
        self._inode = inode
        self.blkszbits = blkszbits
        self.block_size = 1 << blkszbits
        self.read_ahead_blocks = max(self.READ_AHEAD_BYTES >> self.blkszbits, 1)
        self._blocks: SizedLRU[bytes] = SizedLRU(max(cache_bytes, 16 << self.blkszbits))
        self._decoded = functools.lru_cache(maxsize=self.DECODED_BLOCKS)(self._decode_block)

    def block(self, ino: Inode, index: int) -> bytes:
        """Directory block ``index`` of ``ino`` (the last one may be short)."""
        return self._blocks.get((ino.nid, index)) or self._load(ino, index, 1)

    def _load(self, ino: Inode, first: int, count: int) -> bytes:
        """Read ``count`` blocks from ``first`` with one request, cache each and return the first."""
        bits = self.blkszbits
        start = first << bits
        data = self._read(ino, start, count << bits)
        if len(data) != min(count << bits, ino.size - start):
            raise CorruptImage(f"short directory block {first + (len(data) >> bits)}", ino.nid)
        for i in range(count):
            self._blocks.put((ino.nid, first + i), data[i << bits : (i + 1) << bits])
        return data[: self.block_size]

    def _check(self, ino: Inode) -> int:
        if not ino.is_dir:
            raise NotADirectory(f"nid {ino.nid} is not a directory")
        return (ino.size + self.block_size - 1) >> self.blkszbits

    def lookup(self, ino: Inode, name: bytes) -> tuple[int, int] | None:
        """``(nid, file_type)`` of ``name`` in directory ``ino``, or ``None``."""
        nblocks = self._check(ino)
        if not name or len(name) > d.NAME_LEN:
            return None
        head, back, candidate = 0, nblocks - 1, -1
        try:
            while head <= back:
                mid = (head + back) >> 1
                block = self.block(ino, mid)
                diff = _dirents.compare_first(block, len(block), name)
                if diff == 0:
                    candidate = mid
                    break
                if diff < 0:
                    back = mid - 1
                else:
                    candidate = mid
                    head = mid + 1
            if candidate < 0:
                return None
            block = self.block(ino, candidate)
            return _dirents.find(block, len(block), name)
        except CorruptImage as exc:
            raise exc.at(ino.nid, "directory lookup") from None

    def block_count(self, ino: Inode) -> int:
        """Number of directory blocks of ``ino`` (raises ``NotADirectory`` for other inodes)."""
        return self._check(ino)

    def block_entries(self, ino: Inode, index: int, check: bool = False) -> list[DirEntry]:
        """The dirents of block ``index`` alone, so that a checker can go on past a bad block.

        The list may be shared with other callers: do not change it.
        """
        return self._decode_block(ino.nid, index, True) if check else self._decoded(ino.nid, index, False)

    def _decode_block(self, nid: int, index: int, check: bool) -> list[DirEntry]:
        block = self.block(self._inode(nid), index)
        try:
            return _dirents.entries(block, len(block), check, index << self.blkszbits, DirEntry)
        except CorruptImage as exc:
            raise exc.at(nid, f"directory block {index}") from None

    def entries(self, ino: Inode, start: int = 0, check: bool = False) -> Iterator[DirEntry]:
        """Dirents from position ``start`` on (including ``.`` and ``..``), in on-disk order."""
        nblocks = self._check(ino)
        first = start >> self.blkszbits
        skip = ((start & (self.block_size - 1)) + d.DIRENT.size - 1) // d.DIRENT.size
        read_ahead = self.read_ahead_blocks
        for index in range(first, nblocks):
            count = min(read_ahead, nblocks - index)
            if count > 1 and (ino.nid, index) not in self._blocks:
                try:
                    self._load(ino, index, count)
                except ErofsError:
                    read_ahead = 1  # block by block from here: the blocks before a bad one are still listed
            items = self.block_entries(ino, index, check)
            yield from items[skip:] if index == first else items
