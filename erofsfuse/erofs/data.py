"""Reading file contents: flat, inline, chunk-based and compressed layouts.

Mapping follows the kernel: a logical offset maps to an extent whose bytes
are a hole, on a device, inline in the metadata after the inode, or
(compressed layouts) decoded from a pcluster, or a fragment of the packed
inode. A pcluster that a read covers only in part is kept, decoded, in a
cache bounded in bytes, so sequential reads decode each pcluster once; whole
extents go straight to the reader (the kernel keeps what it asked for).
"""

from __future__ import annotations

import enum
import functools
import threading
from collections.abc import Callable
from typing import NamedTuple

from . import _zmap
from . import ondisk as d
from .cache import SingleFlight, SizedLRU
from .decompress import decompress
from .devices import DeviceSet
from .errors import CorruptImage, ErofsError
from .inode import Inode
from .parallel import run_shared
from .superblock import Superblock

# algorithms that decode a pcluster in milliseconds rather than microseconds
SLOW_ALGORITHMS = frozenset({d.COMPRESSION_LZMA, d.COMPRESSION_DEFLATE, d.COMPRESSION_ZSTD})
BIG_EXTENT = 256 * 1024
READ_AHEAD_TRIGGER = 256 * 1024
READ_AHEAD_BYTES = 2 << 20
# compressed bytes one read fetches up front; a hostile map (huge pclusters for tiny extents) cannot make it more
PREFETCH_BYTES = 8 << 20
# a read that decodes at least this much shares its pclusters out between the cores
PARALLEL_DECODE_BYTES = 128 * 1024


class Placement(enum.IntEnum):
    """Where the bytes of an extent are stored (for a compressed extent: the bytes it decodes from)."""

    HOLE = 0  # nowhere: they read as zeros
    DEVICE = 1  # on a device
    METADATA = 2  # in the metadata, right after the inode (inline data) or its compression index (tail packing)
    FRAGMENT = 3  # in the packed inode, from the map's fragment offset (compressed files only)


class MapFlag(enum.IntFlag):
    """The bits the native compressed map (``_zmap``) sets on an extent."""

    PCLUSTER = _zmap.MAPPED  # the extent decodes from a pcluster (without it and FRAGMENT: a hole)
    IN_METADATA = _zmap.INLINE  # that pcluster is stored in the metadata, after the compression index
    FRAGMENT = _zmap.FRAGMENT  # the bytes are in the packed inode
    PARTIAL_REF = _zmap.PARTIAL_REF  # the extent is a prefix of what its pcluster decodes to (deduplication)
    FULL_MAPPED = _zmap.FULL_MAPPED  # the extent is all its pcluster decodes to


class PlainExtent(NamedTuple):
    """``llen`` bytes of an uncompressed file at ``la``, stored at ``pa`` (of device ``device_id``)."""

    la: int
    llen: int
    pa: int
    device_id: int
    placement: Placement


class CompressedExtent(NamedTuple):
    """``llen`` bytes of a compressed file at ``la``, decoded with ``algorithm`` from ``plen`` bytes at ``pa``.

    The fields are those of the native map's tuples, which the read path unpacks under the same names.
    """

    la: int
    llen: int
    pa: int
    plen: int
    algorithm: int
    flags: int  # MapFlag bits

    @property
    def placement(self) -> Placement:
        return _PLACEMENTS[self.flags & _WHERE]

    @property
    def partial(self) -> bool:
        return _is_partial(self.flags)


Extent = PlainExtent | CompressedExtent
NativeExtent = tuple[int, int, int, int, int, int]  # (la, llen, pa, plen, algorithm, flags), as ZMap gives them
# the read path compares placements often: a module global is found faster than an enum class attribute
HOLE, DEVICE, METADATA, FRAGMENT = Placement
# IntFlag operators build enum members, too slow for every extent of every read: flags are tested as plain ints
_WHERE = int(MapFlag.PCLUSTER | MapFlag.IN_METADATA | MapFlag.FRAGMENT)
_PLACEMENTS = {  # flags & _WHERE -> where the extent's bytes are
    0: HOLE,
    int(MapFlag.PCLUSTER): DEVICE,
    int(MapFlag.PCLUSTER | MapFlag.IN_METADATA): METADATA,
    int(MapFlag.FRAGMENT): FRAGMENT,
}
_PARTIAL_BITS = int(MapFlag.PARTIAL_REF | MapFlag.FULL_MAPPED)
_WHOLE = int(MapFlag.FULL_MAPPED)


def _is_partial(flags: int) -> bool:
    """Whether an extent with these flags is less than all its pcluster decodes to (so it is decoded in part)."""
    return flags & _PARTIAL_BITS != _WHOLE


class CompressedMap:
    """A native ``ZMap`` plus the lock that serialises its stateful lookups."""

    __slots__ = ("lock", "zmap")

    def __init__(self, zmap: _zmap.ZMap):
        self.zmap = zmap
        self.lock = threading.Lock()

    @property
    def fragment_offset(self) -> int:
        """Where the file's fragment starts in the packed inode."""
        return self.zmap.fragmentoff

    def map(self, offset: int) -> NativeExtent:
        with self.lock:
            return self.zmap.map(offset)

    def map_range(self, offset: int, end: int) -> list[NativeExtent]:
        with self.lock:
            return self.zmap.map_range(offset, end)


class DataReader:
    """Reads byte ranges of the inodes of one image.

    ``pclusters`` keeps decoded pclusters that reads covered in part (it may be shared: entries are keyed
    by where the pcluster is stored). ``packed_inode`` holds the fragments of compressed files; a reader
    without it (the one that reads the metabox, where the packed inode may live) finds any fragment corrupt.
    """

    def __init__(self, sb: Superblock, devices: DeviceSet, pclusters: SizedLRU[bytes], packed_inode: Inode | None):
        self.sb = sb
        self.blkszbits = sb.blkszbits
        self.block_size = sb.block_size
        self.devices = devices
        self.pclusters = pclusters
        self.packed_inode = packed_inode
        self.device_id_mask = (1 << len(devices.slots).bit_length()) - 1 if devices.slots else 0
        self.lz4_zero_padding = sb.incompat(d.INCOMPAT_LZ4_0PADDING)
        self._decoding: SingleFlight[bytes] = SingleFlight()  # pclusters being decoded for the cache

    # -- public entry points -----------------------------------------------
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

    def extent_at(self, ino: Inode, offset: int) -> Extent:
        """The extent holding byte ``offset`` of the file (a compressed one as a whole)."""
        try:
            if ino.compressed:
                return CompressedExtent(*self.compressed_map(ino).map(offset))
            return self._map_plain(ino, offset)
        except CorruptImage as exc:
            raise exc.at(ino.nid, f"offset {offset}") from None

    def hole_end(self, ino: Inode, offset: int) -> int | None:
        """Where the hole at ``offset`` ends, or None when data is stored there."""
        ext = self.extent_at(ino, offset)
        if ext.placement is not HOLE:
            return None
        if ext.la + ext.llen <= offset:
            raise CorruptImage("a hole that maps no bytes", ino.nid, f"offset {offset}")
        return min(ext.la + ext.llen, ino.size)

    def extents(self, ino: Inode, offset: int = 0, end: int | None = None) -> list[Extent]:
        """The extents that together cover bytes ``[offset, end)`` of the file (to its end by default), in order."""
        end = ino.size if end is None else min(end, ino.size)
        if offset >= end:
            return []
        try:
            if ino.compressed:
                return [CompressedExtent(*ext) for ext in self.compressed_map(ino).map_range(offset, end)]
            found: list[Extent] = []
            while offset < end:
                ext = self._map_plain(ino, offset)
                if ext.la + ext.llen <= offset:
                    raise CorruptImage("empty extent", ino.nid, f"offset {offset}")
                found.append(ext)
                offset = ext.la + ext.llen
            return found
        except CorruptImage as exc:
            raise exc.at(ino.nid, f"offset {offset}") from None

    def costly(self, ino: Inode, offset: int, length: int) -> bool:
        """Whether reading this range decodes much: a slow algorithm or a big extent, not yet cached."""
        if not ino.compressed:
            return False
        try:
            cmap = self.compressed_map(ino)
            end = min(ino.size, offset + length)
            for ext in cmap.map_range(offset, end):
                la, llen, _, _, algorithm, flags = ext
                placement = _PLACEMENTS[flags & _WHERE]
                if placement is FRAGMENT:
                    packed = self.packed_inode
                    if packed is not None:
                        pos = max(offset, la)
                        fragment = cmap.fragment_offset + (pos - la)
                        if self.costly(packed, fragment, min(end, la + llen) - pos):
                            return True
                elif (placement is not HOLE and (algorithm in SLOW_ALGORITHMS or llen > BIG_EXTENT)
                      and self._key(ino, ext, placement) not in self.pclusters):
                    return True
        except ErofsError:
            return True  # the read itself will report it
        return False

    # -- uncompressed layouts ----------------------------------------------
    def _map_plain(self, ino: Inode, la: int) -> PlainExtent:
        if ino.layout == d.LAYOUT_CHUNK_BASED:
            return self._map_chunk(ino, la)
        if ino.layout == d.LAYOUT_FLAT_INLINE:
            tail_start = ((ino.size + self.block_size - 1) >> self.blkszbits) - 1 << self.blkszbits
        elif ino.startblk == d.NULL_ADDR:
            return PlainExtent(la, ino.size - la, 0, 0, HOLE)
        else:
            tail_start = ino.size
        if la < tail_start:
            return PlainExtent(la, tail_start - la, (ino.startblk << self.blkszbits) + la, 0, DEVICE)
        pa = ino.data_start + (la & (self.block_size - 1))
        llen = ino.size - la
        if (pa & (self.block_size - 1)) + llen > self.block_size:
            raise CorruptImage(f"inline data of {llen} bytes crosses a block boundary", ino.nid)
        return PlainExtent(la, llen, pa, 0, METADATA)

    def _map_chunk(self, ino: Inode, la: int) -> PlainExtent:
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
                return PlainExtent(start, llen, 0, 0, HOLE)
            return PlainExtent(start, llen, startblk << self.blkszbits, device_id & self.device_id_mask,
                               DEVICE)
        pos = d.round_up(ino.data_start, d.BLOCK_MAP_ENTRY.size) + d.BLOCK_MAP_ENTRY.size * chunknr
        (startblk,) = d.BLOCK_MAP_ENTRY.unpack(ino.space.read(pos, d.BLOCK_MAP_ENTRY.size))
        if startblk == 0xFFFFFFFF:
            return PlainExtent(start, llen, 0, 0, HOLE)
        return PlainExtent(start, llen, startblk << self.blkszbits, 0, DEVICE)

    def _read_plain(self, ino: Inode, offset: int, end: int) -> bytes:
        parts = []
        pos = offset
        while pos < end:
            ext = self._map_plain(ino, pos)
            stop = min(end, ext.la + ext.llen)
            if stop <= pos:
                raise CorruptImage("empty extent", ino.nid, f"offset {pos}")
            skip = pos - ext.la
            if ext.placement is DEVICE:
                # merge physically contiguous chunks into one read
                while stop < end and ino.layout == d.LAYOUT_CHUNK_BASED:
                    nxt = self._map_chunk(ino, stop)
                    if (nxt.placement is not DEVICE or nxt.device_id != ext.device_id
                            or nxt.pa != ext.pa + (stop - ext.la)):
                        break
                    stop = min(end, nxt.la + nxt.llen)
                parts.append(self.devices.read(ext.pa + skip, stop - pos, ext.device_id))
            elif ext.placement is METADATA:
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
                self.sb.available_algorithms, ino.space.chunk, ino.space.chunk_bits,
            )
            cmap = ino.zmap = CompressedMap(zmap)
        return cmap

    def _read_compressed(self, ino: Inode, offset: int, end: int) -> bytes:
        cmap = self.compressed_map(ino)
        extents = cmap.map_range(offset, end)
        sources = self._prefetch(ino, extents, offset, end)
        _, _, pa, plen, _, flags = extents[-1]
        if end - offset >= READ_AHEAD_TRIGGER and _PLACEMENTS[flags & _WHERE] is DEVICE:
            # a large read is usually part of a sequential one: start the next compressed bytes coming
            self.devices.prefetch(pa + plen, READ_AHEAD_BYTES)
        parts: list[bytes | memoryview | None] = []
        decodes: list[tuple[int, Callable[[], bytes | memoryview]]] = []  # (index in parts, what fills it)
        decoded_bytes = 0
        pos = offset
        for ext in extents:
            la, llen, pa, _, _, flags = ext
            placement = _PLACEMENTS[flags & _WHERE]
            stop = min(end, la + llen)
            if placement is FRAGMENT:
                parts.append(self._read_fragment(ino, cmap.fragment_offset + (pos - la), stop - pos))
            elif placement is HOLE:
                parts.append(bytes(stop - pos))
            else:
                if pos == la and stop == la + llen and placement is DEVICE and pa in sources:
                    # a whole extent is decoded without the cache: the kernel keeps what it asked for
                    job = functools.partial(self._decode, ino, ext, sources[pa])
                else:
                    job = functools.partial(self._pcluster, ino, ext, placement, sources.get(pa), pos - la, stop - la)
                decodes.append((len(parts), job))
                parts.append(None)
                decoded_bytes += llen
            pos = stop
        if len(decodes) > 1 and decoded_bytes >= PARALLEL_DECODE_BYTES:
            for (index, _), data in zip(decodes, run_shared([job for _, job in decodes]), strict=True):
                parts[index] = data
        else:
            for index, job in decodes:
                parts[index] = job()
        return parts[0] if len(parts) == 1 and type(parts[0]) is bytes else b"".join(parts)  # type: ignore[arg-type]

    def _prefetch(self, ino: Inode, extents: list[NativeExtent], offset: int, end: int) -> dict[int, memoryview]:
        """Compressed bytes of the pclusters to decode (whole extents, and parts not cached), read in one go
        where they lie back to back; at most ``PREFETCH_BYTES`` (the rest is read one pcluster at a time)."""
        wanted: list[tuple[int, int]] = []
        budget = PREFETCH_BYTES
        for ext in extents:
            la, llen, pa, plen, _, flags = ext
            if _PLACEMENTS[flags & _WHERE] is not DEVICE:  # only pclusters on a device are read here
                continue
            if (la < offset or la + llen > end) and self._key(ino, ext, DEVICE) in self.pclusters:
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
        packed = self.packed_inode
        if packed is None:
            raise CorruptImage("fragment data but the image has no packed inode", ino.nid)
        if ino.nid == packed.nid:
            raise CorruptImage("the packed inode refers to a fragment of itself", ino.nid)
        data = self.read(packed, pos, length)
        if len(data) != length:
            raise CorruptImage(f"fragment at {pos} runs past the end of the packed inode", ino.nid)
        return data

    def _key(self, ino: Inode, ext: NativeExtent, placement: Placement) -> tuple:
        """What identifies a decoded pcluster: one stored in metadata belongs to its inode."""
        la, llen, pa, plen, algorithm, _ = ext
        shift = la & (self.block_size - 1) if algorithm == d.COMPRESSION_INTERLACED else 0
        return (ino.nid if placement is METADATA else -1, pa, plen, algorithm, llen, shift)

    def _pcluster(self, ino: Inode, ext: NativeExtent, placement: Placement, src: bytes | memoryview | None,
                  start: int, stop: int) -> memoryview:
        """Bytes ``[start, stop)`` of the decoded extent, through the cache (``src``: its compressed bytes, when
        already read). Concurrent reads of one pcluster decode it once: the later ones wait for the first."""
        key = self._key(ino, ext, placement)
        out = self.pclusters.get(key)
        if out is None:
            out = self._decoding.run(key, functools.partial(self._decode_kept, ino, ext, placement, src, key))
        return memoryview(out)[start:stop]

    def _decode_kept(self, ino: Inode, ext: NativeExtent, placement: Placement, src: bytes | memoryview | None,
                     key: tuple) -> bytes:
        if src is None:
            _, _, pa, plen, _, _ = ext
            src = (ino.space if placement is METADATA else self.devices).read(pa, plen)
        # what is kept must not be a view that holds a larger read alive
        return self.pclusters.put(key, bytes(self._decode(ino, ext, src)))

    def _decode(self, ino: Inode, ext: NativeExtent, src: bytes | memoryview) -> bytes | memoryview:
        la, llen, pa, plen, algorithm, flags = ext
        try:
            return decompress(algorithm, src, llen, partial=_is_partial(flags), la=la,
                              block_size=self.block_size, cfg=self.sb.compression,
                              lz4_zero_padding=self.lz4_zero_padding)
        except ErofsError as exc:
            raise CorruptImage(f"{exc} (pcluster at {pa}, {plen} bytes)", ino.nid, f"offset {la}") from None
