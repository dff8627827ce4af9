"""Superblock, device table and compression configurations: parsed and checked."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import crc32c

from . import ondisk as d
from .devices import BackingFile, DeviceSlot
from .errors import CorruptImage, UnsupportedFeature

MIN_BLKSZBITS = 9  # 512 B
MAX_BLKSZBITS = 16  # 64 KiB
MAX_SB_SIZE = 4096 - d.SUPER_OFFSET


@dataclass
class CompressionConfig:
    """Per-algorithm settings from the superblock's config records."""

    lz4_max_distance: int = 0
    lz4_max_pclusterblks: int = 1
    lzma_dict_size: int = 0
    deflate_windowbits: int = 15
    zstd_windowlog: int = 0


@dataclass
class Superblock:
    blkszbits: int
    sb_size: int
    checksum: int
    feature_compat: int
    feature_incompat: int
    root_nid: int
    inos: int
    epoch: int
    fixed_nsec: int
    build_time: int
    primary_blocks: int
    meta_blkaddr: int
    xattr_blkaddr: int
    uuid: bytes
    volume_name: bytes
    extra_devices: int
    devt_slotoff: int
    xattr_prefix_count: int
    xattr_prefix_start: int
    packed_nid: int
    metabox_nid: int
    xattr_filter_reserved: int
    ishare_xattr_prefix_id: int
    available_algorithms: int = 0
    compression: CompressionConfig = field(default_factory=CompressionConfig)

    @property
    def block_size(self) -> int:
        return 1 << self.blkszbits

    def compat(self, bit: int) -> bool:
        return bool(self.feature_compat & bit)

    def incompat(self, bit: int) -> bool:
        return bool(self.feature_incompat & bit)

    @property
    def uuid_text(self) -> str:
        return str(uuidlib.UUID(bytes=self.uuid))

    @property
    def volume_label(self) -> str:
        return self.volume_name.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def kernel_crc32c(data: bytes) -> int:
    """The kernel's ``crc32c(~0, data)``: the standard CRC-32C without the final inversion."""
    return crc32c.crc32c(data) ^ 0xFFFFFFFF


def parse_superblock(primary: BackingFile) -> Superblock:
    """Read, check and decode the superblock of ``primary``."""
    if primary.size < d.SUPER_OFFSET + d.SUPERBLOCK.size:
        raise CorruptImage(f"image is too small for a superblock ({primary.size} bytes)")
    # the superblock alone: the rest of its block is read only to check its checksum, so that a file read
    # through a hash tree needs no block past the superblock's to be intact for the image to open
    head = primary.pread(d.SUPER_OFFSET, d.SUPERBLOCK.size)
    raw = dict(zip(d.SUPERBLOCK_FIELDS, d.SUPERBLOCK.unpack_from(head), strict=True))
    if raw["magic"] != d.SUPER_MAGIC:
        raise CorruptImage(f"bad magic 0x{raw['magic']:08x} (not an EROFS image, or wrong --offset)")
    bits = raw["blkszbits"]
    if not MIN_BLKSZBITS <= bits <= MAX_BLKSZBITS:
        raise UnsupportedFeature(f"block size 2^{bits} is not supported (512 B to 64 KiB)")
    unknown = raw["feature_incompat"] & ~d.INCOMPAT_ALL
    if unknown:
        names = ", ".join(f"0x{b:x}" for b in (1 << i for i in range(32)) if unknown & b)
        raise UnsupportedFeature(f"unknown incompatible feature bits {names}")
    sb_size = 128 + raw["sb_extslots"] * d.SB_EXTSLOT_SIZE
    if sb_size > MAX_SB_SIZE:
        raise CorruptImage(f"invalid sb_extslots {raw['sb_extslots']}")
    if raw["feature_compat"] & d.COMPAT_SB_CHKSUM:
        length = _checksummed_length(1 << bits)
        if primary.size - d.SUPER_OFFSET < length:
            raise CorruptImage("image is too small for its checksummed superblock")
        _verify_checksum(primary.pread(d.SUPER_OFFSET, length), 1 << bits, raw["checksum"])
    if raw["dirblkbits"]:
        raise UnsupportedFeature(f"directory block size bits {raw['dirblkbits']} are not supported")

    incompat = raw["feature_incompat"]
    root_nid, blocks = raw["rootnid_2b"], raw["blocks_lo"]
    if incompat & d.INCOMPAT_48BIT and raw["rootnid_8b"]:
        root_nid = raw["rootnid_8b"]
        blocks |= raw["rootnid_2b"] << 32  # the 2-byte field holds blocks_hi then
    if raw["packed_nid"] >> d.DIRENT_NID_METABOX_BIT:
        raise CorruptImage("packed inode nid has the metabox bit set")
    metabox_nid = 0
    if incompat & d.INCOMPAT_METABOX:
        if sb_size <= 128:
            raise CorruptImage("metabox feature set but the superblock has no metabox_nid")
        metabox_nid = raw["metabox_nid"]
        if metabox_nid >> d.DIRENT_NID_METABOX_BIT:
            raise CorruptImage("metabox inode nid has the metabox bit set")
    if raw["feature_compat"] & d.COMPAT_ISHARE_XATTRS and raw["ishare_xattr_prefix_id"] >= raw["xattr_prefix_count"]:
        raise CorruptImage(f"invalid ishare xattr prefix id {raw['ishare_xattr_prefix_id']}")

    sb = Superblock(
        blkszbits=bits,
        sb_size=sb_size,
        checksum=raw["checksum"],
        feature_compat=raw["feature_compat"],
        feature_incompat=incompat,
        root_nid=root_nid,
        inos=raw["inos"],
        epoch=raw["epoch"],
        fixed_nsec=raw["fixed_nsec"],
        build_time=raw["build_time"],
        primary_blocks=blocks,
        meta_blkaddr=raw["meta_blkaddr"],
        xattr_blkaddr=raw["xattr_blkaddr"],
        uuid=raw["uuid"],
        volume_name=raw["volume_name"],
        extra_devices=raw["extra_devices"] if incompat & d.INCOMPAT_DEVICE_TABLE else 0,
        devt_slotoff=raw["devt_slotoff"],
        xattr_prefix_count=raw["xattr_prefix_count"],
        xattr_prefix_start=raw["xattr_prefix_start"],
        packed_nid=raw["packed_nid"],
        metabox_nid=metabox_nid,
        xattr_filter_reserved=raw["xattr_filter_reserved"],
        ishare_xattr_prefix_id=raw["ishare_xattr_prefix_id"],
    )
    _parse_compression(sb, raw["u1"], primary)
    return sb


def _checksummed_length(block_size: int) -> int:
    """How many bytes from the superblock's start its checksum covers: the rest of its block."""
    return block_size - d.SUPER_OFFSET if block_size > d.SUPER_OFFSET else block_size


def _verify_checksum(head: bytes, block_size: int, expected: int) -> None:
    length = _checksummed_length(block_size)
    if len(head) < length:
        raise CorruptImage("image is too small for its checksummed superblock")
    area = bytearray(head[:length])
    off = d.SUPERBLOCK_CHECKSUM_OFFSET
    area[off : off + 4] = b"\0\0\0\0"
    actual = kernel_crc32c(bytes(area))
    if actual != expected:
        raise CorruptImage(f"superblock checksum mismatch: stored 0x{expected:08x}, computed 0x{actual:08x}")


def compression_records(sb: Superblock, primary: BackingFile) -> Iterator[tuple[int, int, bytes]]:
    """``(algorithm, offset, record)`` for each configuration record after the superblock, in on-disk order.

    Each record is a 16-bit length and that many bytes, 4-byte aligned, one per
    algorithm the superblock lists, lowest algorithm first.
    """
    pos = d.SUPER_OFFSET + sb.sb_size
    for alg in range(d.COMPRESSION_MAX):
        if not sb.available_algorithms & (1 << alg):
            continue
        pos = d.round_up(pos, 4)
        (size,) = d.LE16.unpack(primary.pread(pos, 2))
        if not size:
            raise CorruptImage(f"empty {d.ALGORITHM_NAMES[alg]} configuration record")
        yield alg, pos + 2, primary.pread(pos + 2, size)
        pos += 2 + size


def _parse_compression(sb: Superblock, u1: int, primary: BackingFile) -> None:
    cfg = sb.compression
    if not sb.incompat(d.INCOMPAT_COMPR_CFGS):
        cfg.lz4_max_distance = u1
        if u1 or sb.incompat(d.INCOMPAT_LZ4_0PADDING):
            sb.available_algorithms = 1 << d.COMPRESSION_LZ4
        return
    sb.available_algorithms = u1
    unknown = u1 & ~((1 << d.COMPRESSION_MAX) - 1)
    if unknown:
        raise UnsupportedFeature(f"unknown compression algorithms 0x{unknown:x}")
    for alg, _offset, data in compression_records(sb, primary):
        size = len(data)
        if alg == d.COMPRESSION_LZ4:
            if size < d.LZ4_CFGS.size:
                raise CorruptImage(f"lz4 configuration record too short ({size} bytes)")
            cfg.lz4_max_distance, cfg.lz4_max_pclusterblks = d.LZ4_CFGS.unpack_from(data)
            cfg.lz4_max_pclusterblks = cfg.lz4_max_pclusterblks or 1
            if cfg.lz4_max_pclusterblks > d.PCLUSTER_MAX_SIZE // sb.block_size:
                raise UnsupportedFeature(f"lz4 pclusters of {cfg.lz4_max_pclusterblks} blocks are too large")
        elif alg == d.COMPRESSION_LZMA:
            if size < d.LZMA_CFGS.size:
                raise CorruptImage(f"lzma configuration record too short ({size} bytes)")
            cfg.lzma_dict_size, fmt = d.LZMA_CFGS.unpack_from(data)
            if fmt:
                raise UnsupportedFeature(f"unknown MicroLZMA format {fmt}")
            if not d.LZMA_MIN_DICT_SIZE <= cfg.lzma_dict_size <= d.LZMA_MAX_DICT_SIZE:
                raise UnsupportedFeature(f"lzma dictionary of {cfg.lzma_dict_size} bytes is not supported")
        elif alg == d.COMPRESSION_DEFLATE:
            if size < d.DEFLATE_CFGS.size:
                raise CorruptImage(f"deflate configuration record too short ({size} bytes)")
            # The kernel refuses only windows it cannot hold and inflates every stream with the
            # full window: mkfs.erofs' libdeflate backend writes 0 here.
            (cfg.deflate_windowbits,) = d.DEFLATE_CFGS.unpack_from(data)
            if cfg.deflate_windowbits > d.DEFLATE_MAX_WINDOWBITS:
                raise UnsupportedFeature(f"deflate window of 2^{cfg.deflate_windowbits} bytes is not supported")
        else:
            if size < d.ZSTD_CFGS.size:
                raise CorruptImage(f"zstd configuration record too short ({size} bytes)")
            fmt, cfg.zstd_windowlog = d.ZSTD_CFGS.unpack_from(data)
            if fmt:
                raise UnsupportedFeature(f"unknown zstd format {fmt}")
            if cfg.zstd_windowlog > d.ZSTD_MAX_WINDOWLOG:
                window_log = cfg.zstd_windowlog + d.ZSTD_WINDOWLOG_BASE
                raise UnsupportedFeature(f"zstd window of 2^{window_log} bytes is not supported")


def parse_device_table(sb: Superblock, primary: BackingFile) -> list[DeviceSlot]:
    """The on-disk device table (empty when the image has no extra devices)."""
    slots = []
    pos = sb.devt_slotoff * d.DEVICE_SLOT.size
    wide = sb.incompat(d.INCOMPAT_48BIT)
    for _ in range(sb.extra_devices):
        tag, blocks_lo, uniaddr_lo, blocks_hi, uniaddr_hi = d.DEVICE_SLOT.unpack(primary.pread(pos, d.DEVICE_SLOT.size))
        blocks = blocks_lo | (blocks_hi << 32 if wide else 0)
        uniaddr = uniaddr_lo | (uniaddr_hi << 32 if wide else 0)
        slots.append(DeviceSlot(tag=tag, blocks=blocks, uniaddr=uniaddr))
        pos += d.DEVICE_SLOT.size
    return slots
