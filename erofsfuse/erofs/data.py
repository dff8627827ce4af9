"""Reading file contents: flat, inline, chunk-based and compressed layouts.

Mapping follows the kernel: a logical offset maps to an extent that is a
hole, a run of device blocks, inline bytes in the metadata after the inode,
or (compressed layouts) a pcluster to decode or a fragment of the packed
inode. A pcluster that a read covers only in part is kept, decoded, in a
cache bounded in bytes, so sequential reads decode each pcluster once; whole
extents go straight to the reader (the kernel keeps what it asked for).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, NamedTuple

from . import _zmap
from . import ondisk as d
from .cache import SizedLRU
from .decompress import decompress
from .errors import CorruptImage, ErofsError
from .inode import Inode

if TYPE_CHECKING:
    from .image import ErofsImage

HOLE, MAPPED, INLINE = 0, 1, 2
# algorithms that decode a pcluster in milliseconds rather than microseconds
SLOW_ALGORITHMS = frozenset({d.COMPRESSION_LZMA, d.COMPRESSION_DEFLATE, d.COMPRESSION_ZSTD})
BIG_EXTENT = 256 * 1024
READ_AHEAD_TRIGGER = 256 * 1024
READ_AHEAD_BYTES = 2 << 20
STORED = _zmap.MAPPED | _zmap.INLINE | _zmap.FRAGMENT  # where an extent's bytes are; MAPPED alone: a device
# compressed bytes one read fetches up front; a hostile map (huge pclusters for tiny extents) cannot make it more
PREFETCH_BYTES = 8 << 20


class Extent(NamedTuple):
    la: int
    llen: int
    pa: int
    device_id: int
    kind: int


class CompressedMap:
    """A native ``ZMap`` plus the lock that serialises its stateful lookups."""

    __slots__ = ("lock", "zmap")

    def __init__(self, zmap: _zmap.ZMap):
        self.zmap = zmap
        self.lock = threading.Lock()

    def map(self, offset: int) -> tuple[int, int, int, int, int, int]:
        with self.lock:
            return self.zmap.map(offset)

    def map_range(self, offset: int, end: int) -> list[tuple[int, int, int, int, int, int]]:
        with self.lock:
            return self.zmap.map_range(offset, end)


class DataReader:
    """Reads byte ranges of inodes of one image."""

    def __init__(self, image: ErofsImage, cache_bytes: int):
        self.image = image
        sb = image.sb
        self.blkszbits = sb.blkszbits
        self.block_size = sb.block_size
        self.devices = image.devices
        self.device_id_mask = (1 << len(image.devices.slots).bit_length()) - 1 if image.devices.slots else 0
        self.lz4_zero_padding = sb.incompat(d.INCOMPAT_LZ4_0PADDING)
        self.pclusters: SizedLRU[bytes] = SizedLRU(cache_bytes)

    # -- public entry point ------------------------------------------------
    def read(self, ino: Inode, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (short only at end of file)."""
        end = min(ino.size, offset + length)
        if offset >= end:
            return b""
        try:
            if ino.compressed:
                return self._read_compressed(ino, offset, end)
            return self._read_plain(ino, offset, end)
        except CorruptImage as exc:
            raise exc.at(ino.nid, f"offset {offset}") from None

    # -- uncompressed layouts ----------------------------------------------
    def map_plain(self, ino: Inode, la: int) -> Extent:
        if ino.layout == d.LAYOUT_CHUNK_BASED:
            return self._map_chunk(ino, la)
        if ino.layout == d.LAYOUT_FLAT_INLINE:
            tail_start = ((ino.size + self.block_size - 1) >> self.blkszbits) - 1 << self.blkszbits
        elif ino.startblk == d.NULL_ADDR:
            return Extent(la, ino.size - la, 0, 0, HOLE)
        else:
            tail_start = ino.size
        if la < tail_start:
            return Extent(la, tail_start - la, (ino.startblk << self.blkszbits) + la, 0, MAPPED)
        pa = ino.data_start + (la & (self.block_size - 1))
        llen = ino.size - la
        if (pa & (self.block_size - 1)) + llen > self.block_size:
            raise CorruptImage(f"inline data of {llen} bytes crosses a block boundary", ino.nid)
        return Extent(la, llen, pa, 0, INLINE)

    def _map_chunk(self, ino: Inode, la: int) -> Extent:
        fmt = ino.chunkformat
        chunkbits = self.blkszbits + (fmt & d.CHUNK_FORMAT_BLKBITS_MASK)
        chunknr = la >> chunkbits
        start = chunknr << chunkbits
        llen = min(1 << chunkbits, ((ino.size - start + self.block_size - 1) >> self.blkszbits) << self.blkszbits)
        if fmt & d.CHUNK_FORMAT_INDEXES:
            pos = d.round_up(ino.data_start, d.CHUNK_INDEX.size) + d.CHUNK_INDEX.size * chunknr
            hi, device_id, lo = d.CHUNK_INDEX.unpack(ino.space.read(pos, d.CHUNK_INDEX.size))
            mask = (1 << (48 if fmt & d.CHUNK_FORMAT_48BIT else 32)) - 1
            startblk = (hi << 32 | lo) & mask
            if startblk == mask:
                return Extent(start, llen, 0, 0, HOLE)
            return Extent(start, llen, startblk << self.blkszbits, device_id & self.device_id_mask, MAPPED)
        pos = d.round_up(ino.data_start, d.BLOCK_MAP_ENTRY.size) + d.BLOCK_MAP_ENTRY.size * chunknr
        (startblk,) = d.BLOCK_MAP_ENTRY.unpack(ino.space.read(pos, d.BLOCK_MAP_ENTRY.size))
        if startblk == 0xFFFFFFFF:
            return Extent(start, llen, 0, 0, HOLE)
        return Extent(start, llen, startblk << self.blkszbits, 0, MAPPED)

    def _read_plain(self, ino: Inode, offset: int, end: int) -> bytes:
        parts = []
        pos = offset
        while pos < end:
            ext = self.map_plain(ino, pos)
            stop = min(end, ext.la + ext.llen)
            if stop <= pos:
                raise CorruptImage("empty extent", ino.nid, f"offset {pos}")
            skip = pos - ext.la
            if ext.kind == MAPPED:
                # merge physically contiguous chunks into one read
                while stop < end and ino.layout == d.LAYOUT_CHUNK_BASED:
                    nxt = self._map_chunk(ino, stop)
                    if nxt.kind != MAPPED or nxt.device_id != ext.device_id or nxt.pa != ext.pa + (stop - ext.la):
                        break
                    stop = min(end, nxt.la + nxt.llen)
                parts.append(self.devices.read(ext.pa + skip, stop - pos, ext.device_id))
            elif ext.kind == INLINE:
                parts.append(ino.space.read(ext.pa + skip, stop - pos))
            else:
                parts.append(bytes(stop - pos))
            pos = stop
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # -- compressed layouts -------------------------------------------------
    def compressed_map(self, ino: Inode) -> CompressedMap:
        cmap = ino.zmap
        if cmap is None:
            zmap = _zmap.ZMap(
                ino.nid, ino.layout, ino.size, ino.data_start, self.blkszbits,
                self.image.sb.available_algorithms, ino.space.chunk, ino.space.chunk_bits,
            )
            cmap = ino.zmap = CompressedMap(zmap)
        return cmap

    def _read_compressed(self, ino: Inode, offset: int, end: int) -> bytes:
        cmap = self.compressed_map(ino)
        extents = cmap.map_range(offset, end)
        sources = self._prefetch(ino, extents, offset, end)
        last = extents[-1]
        if end - offset >= READ_AHEAD_TRIGGER and last[5] & STORED == _zmap.MAPPED:
            # a large read is usually part of a sequential one: start the next compressed bytes coming
            self.devices.prefetch(last[2] + last[3], READ_AHEAD_BYTES)
        parts = []
        pos = offset
        for ext in extents:
            la, llen, pa = ext[:3]
            stop = min(end, la + llen)
            if pos == la and stop == la + llen and ext[5] & STORED == _zmap.MAPPED and pa in sources:
                # a whole extent is decoded without the cache: the kernel keeps what it asked for
                parts.append(self._decode(ino, ext, sources[pa]))
            else:
                parts.append(self._extent_bytes(ino, cmap, ext, pos, stop, sources))
            pos = stop
        return parts[0] if len(parts) == 1 and type(parts[0]) is bytes else b"".join(parts)

    def _extent_bytes(self, ino: Inode, cmap: CompressedMap, ext: tuple[int, int, int, int, int, int], pos: int,
                      stop: int, sources: dict[int, memoryview]) -> bytes:
        """Bytes ``[pos, stop)`` of one extent, through the pcluster cache."""
        la, llen, pa, plen, alg, flags = ext
        if flags & _zmap.FRAGMENT:
            return self._read_fragment(ino, cmap.zmap.fragmentoff + (pos - la), stop - pos)
        if not flags & _zmap.MAPPED:
            return bytes(stop - pos)
        out = self._pcluster(ino, la, llen, pa, plen, alg, flags, sources.get(pa))
        return out[pos - la : stop - la]

    def _prefetch(self, ino: Inode, extents: list[tuple[int, int, int, int, int, int]], offset: int, end: int,
                  ) -> dict[int, memoryview]:
        """Compressed bytes of the pclusters to decode (whole extents, and parts not cached), read in one go
        where they lie back to back; at most ``PREFETCH_BYTES`` (the rest is read one pcluster at a time)."""
        wanted: list[tuple[int, int]] = []
        budget = PREFETCH_BYTES
        for la, llen, pa, plen, alg, flags in extents:
            if flags & STORED != _zmap.MAPPED:  # only pclusters on a device are read here
                continue
            if (la < offset or la + llen > end) and self._key(ino, la, llen, pa, plen, alg, flags) in self.pclusters:
                continue
            budget -= plen
            if budget < 0:
                break
            wanted.append((pa, plen))
        sources: dict[int, memoryview] = {}
        first = 0
        while first < len(wanted):
            last = first
            while last + 1 < len(wanted) and wanted[last + 1][0] == wanted[last][0] + wanted[last][1]:
                last += 1
            start = wanted[first][0]
            data = memoryview(self.devices.read(start, wanted[last][0] + wanted[last][1] - start))
            for pa, plen in wanted[first : last + 1]:
                sources[pa] = data[pa - start : pa - start + plen]
            first = last + 1
        return sources

    def _read_fragment(self, ino: Inode, pos: int, length: int) -> bytes:
        packed = self.image.packed_inode
        if packed is None:
            raise CorruptImage("fragment data but the image has no packed inode", ino.nid)
        if ino.nid == packed.nid:
            raise CorruptImage("the packed inode refers to a fragment of itself", ino.nid)
        data = self.read(packed, pos, length)
        if len(data) != length:
            raise CorruptImage(f"fragment at {pos} runs past the end of the packed inode", ino.nid)
        return data

    def costly(self, ino: Inode, offset: int, length: int) -> bool:
        """Whether reading this range decodes much: a slow algorithm or a big extent, not yet cached."""
        if not ino.compressed:
            return False
        try:
            cmap = self.compressed_map(ino)
            end = min(ino.size, offset + length)
            for la, llen, pa, plen, alg, flags in cmap.map_range(offset, end):
                if flags & _zmap.FRAGMENT and self.image.packed_inode is not None:
                    pos = max(offset, la)
                    fragment = cmap.zmap.fragmentoff + (pos - la)
                    if self.costly(self.image.packed_inode, fragment, min(end, la + llen) - pos):
                        return True
                elif (flags & _zmap.MAPPED and (alg in SLOW_ALGORITHMS or llen > BIG_EXTENT)
                      and self._key(ino, la, llen, pa, plen, alg, flags) not in self.pclusters):
                    return True
        except ErofsError:
            return True  # the read itself will report it
        return False

    def _key(self, ino: Inode, la: int, llen: int, pa: int, plen: int, alg: int, flags: int) -> tuple:
        """What identifies a decoded pcluster: inline ones live in the inode's metadata."""
        inline = bool(flags & _zmap.INLINE)
        shift = la & (self.block_size - 1) if alg == d.COMPRESSION_INTERLACED else 0
        return (ino.nid if inline else -1, pa, plen, alg, llen, shift)

    def _pcluster(self, ino: Inode, la: int, llen: int, pa: int, plen: int, alg: int, flags: int,
                  src: bytes | memoryview | None = None) -> bytes:
        """The decoded extent, through the cache (``src``: its compressed bytes, when already read)."""
        inline = bool(flags & _zmap.INLINE)
        key = self._key(ino, la, llen, pa, plen, alg, flags)
        out = self.pclusters.get(key)
        if out is not None:
            return out
        if src is None:
            src = ino.space.read(pa, plen) if inline else self.devices.read(pa, plen)
        # what is kept must not be a view that holds a larger read alive
        return self.pclusters.put(key, bytes(self._decode(ino, (la, llen, pa, plen, alg, flags), src)))

    def _decode(self, ino: Inode, ext: tuple[int, int, int, int, int, int], src: bytes | memoryview,
                ) -> bytes | memoryview:
        la, llen, pa, plen, alg, flags = ext
        partial = bool(flags & _zmap.PARTIAL_REF) or not flags & _zmap.FULL_MAPPED
        try:
            return decompress(alg, src, llen, partial=partial, la=la, block_size=self.block_size,
                              cfg=self.image.sb.compression, lz4_zero_padding=self.lz4_zero_padding)
        except ErofsError as exc:
            raise CorruptImage(f"{exc} (pcluster at {pa}, {plen} bytes)", ino.nid, f"offset {la}") from None
