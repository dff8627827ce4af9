"""The EROFS on-disk format: every constant and structure layout, in one place.

Field names follow the Linux kernel's ``erofs_fs.h`` so that the two can be
read side by side. All integers are little-endian.
"""

from __future__ import annotations

import stat
import struct

SUPER_OFFSET = 1024
SUPER_MAGIC = 0xE0F5E1E2
SB_EXTSLOT_SIZE = 16
ISLOT_BITS = 5  # nid -> byte offset: nid << 5

# -- feature bits -----------------------------------------------------------
COMPAT_NAMES = {
    0x01: "sb_csum",
    0x02: "mtime",
    0x04: "xattr_filter",
    0x08: "shared_ea_in_metabox",
    0x10: "plain_xattr_pfx",
    0x20: "ishare_xattrs",
}
COMPAT_SB_CHKSUM = 0x01
COMPAT_XATTR_FILTER = 0x04
COMPAT_SHARED_EA_IN_METABOX = 0x08
COMPAT_PLAIN_XATTR_PFX = 0x10
COMPAT_ISHARE_XATTRS = 0x20

INCOMPAT_LZ4_0PADDING = 0x001
INCOMPAT_COMPR_CFGS = 0x002  # also BIG_PCLUSTER
INCOMPAT_CHUNKED_FILE = 0x004
INCOMPAT_DEVICE_TABLE = 0x008  # also COMPR_HEAD2
INCOMPAT_ZTAILPACKING = 0x010
INCOMPAT_FRAGMENTS = 0x020  # also DEDUPE
INCOMPAT_XATTR_PREFIXES = 0x040
INCOMPAT_48BIT = 0x080
INCOMPAT_METABOX = 0x100
INCOMPAT_ALL = (INCOMPAT_METABOX << 1) - 1
INCOMPAT_NAMES = {
    INCOMPAT_LZ4_0PADDING: "lz4_0padding",
    INCOMPAT_COMPR_CFGS: "compr_cfgs/big_pcluster",
    INCOMPAT_CHUNKED_FILE: "chunked_file",
    INCOMPAT_DEVICE_TABLE: "device_table/compr_head2",
    INCOMPAT_ZTAILPACKING: "ztailpacking",
    INCOMPAT_FRAGMENTS: "fragments/dedupe",
    INCOMPAT_XATTR_PREFIXES: "xattr_prefixes",
    INCOMPAT_48BIT: "48bit",
    INCOMPAT_METABOX: "metabox",
}


def feature_names(mask: int, names: dict[int, str]) -> list[str]:
    """Names of the bits set in ``mask``; unknown bits are shown as hex."""
    out = []
    bit = 1
    while bit <= mask:
        if mask & bit:
            out.append(names.get(bit, f"0x{bit:x}"))
        bit <<= 1
    return out


# -- superblock -------------------------------------------------------------
SUPERBLOCK = struct.Struct(
    "<I I I B B H Q q I I I I 16s 16s I H H H B B I Q B B 2x I Q 8x Q 8x"
)
SUPERBLOCK_FIELDS = (
    "magic checksum feature_compat blkszbits sb_extslots rootnid_2b inos epoch fixed_nsec "
    "blocks_lo meta_blkaddr xattr_blkaddr uuid volume_name feature_incompat u1 extra_devices "
    "devt_slotoff dirblkbits xattr_prefix_count xattr_prefix_start packed_nid "
    "xattr_filter_reserved ishare_xattr_prefix_id build_time rootnid_8b metabox_nid"
).split()
SUPERBLOCK_CHECKSUM_OFFSET = 4
assert SUPERBLOCK.size == 144

DEVICE_SLOT = struct.Struct("<64s I I H H 52x")  # tag blocks_lo uniaddr_lo blocks_hi uniaddr_hi
assert DEVICE_SLOT.size == 128

# -- inodes -----------------------------------------------------------------
I_VERSION_MASK = 0x01
I_DATALAYOUT_BIT = 1
I_DATALAYOUT_MASK = 0x07
I_NLINK_1_BIT = 4  # non-directory compact inodes
I_DOT_OMITTED_BIT = 4  # directories
I_ALL = (1 << (I_NLINK_1_BIT + 1)) - 1

LAYOUT_FLAT_PLAIN = 0
LAYOUT_COMPRESSED_FULL = 1
LAYOUT_FLAT_INLINE = 2
LAYOUT_COMPRESSED_COMPACT = 3
LAYOUT_CHUNK_BASED = 4
LAYOUT_NAMES = {
    LAYOUT_FLAT_PLAIN: "flat-plain",
    LAYOUT_COMPRESSED_FULL: "compressed-full",
    LAYOUT_FLAT_INLINE: "flat-inline",
    LAYOUT_COMPRESSED_COMPACT: "compressed-compact",
    LAYOUT_CHUNK_BASED: "chunk-based",
}

# i_format i_xattr_icount i_mode i_nb i_size i_mtime i_u i_ino i_uid i_gid
INODE_COMPACT = struct.Struct("<H H H H I I I I H H 4x")
# i_format i_xattr_icount i_mode i_nb i_size i_u i_ino i_uid i_gid i_mtime i_mtime_nsec i_nlink
INODE_EXTENDED = struct.Struct("<H H H H Q I I I I q I I 16x")
assert INODE_COMPACT.size == 32 and INODE_EXTENDED.size == 64

NULL_ADDR = (1 << 64) - 1

CHUNK_FORMAT_BLKBITS_MASK = 0x001F
CHUNK_FORMAT_INDEXES = 0x0020
CHUNK_FORMAT_48BIT = 0x0040
CHUNK_FORMAT_ALL = (CHUNK_FORMAT_48BIT << 1) - 1
BLOCK_MAP_ENTRY = struct.Struct("<I")
LE16 = struct.Struct("<H")
CHUNK_INDEX = struct.Struct("<H H I")  # startblk_hi device_id startblk_lo

# -- directories ------------------------------------------------------------
DIRENT = struct.Struct("<Q H B x")  # nid nameoff file_type
DIRENT_NID_METABOX_BIT = 63
DIRENT_NID_MASK = (1 << DIRENT_NID_METABOX_BIT) - 1
NAME_LEN = 255

FT_UNKNOWN, FT_REG_FILE, FT_DIR, FT_CHRDEV, FT_BLKDEV, FT_FIFO, FT_SOCK, FT_SYMLINK = range(8)
FILE_TYPES = {  # inode type (S_IFMT) -> dirent file_type
    stat.S_IFREG: FT_REG_FILE,
    stat.S_IFDIR: FT_DIR,
    stat.S_IFCHR: FT_CHRDEV,
    stat.S_IFBLK: FT_BLKDEV,
    stat.S_IFIFO: FT_FIFO,
    stat.S_IFSOCK: FT_SOCK,
    stat.S_IFLNK: FT_SYMLINK,
}
FILE_TYPE_MODES = {ft: mode for mode, ft in FILE_TYPES.items()}

# -- extended attributes -----------------------------------------------------
XATTR_IBODY_HEADER = struct.Struct("<I B 7x")  # h_name_filter h_shared_count
XATTR_ENTRY = struct.Struct("<B B H")  # e_name_len e_name_index e_value_size
XATTR_INDEX_USER = 1
XATTR_INDEX_POSIX_ACL_ACCESS = 2
XATTR_INDEX_POSIX_ACL_DEFAULT = 3
XATTR_INDEX_TRUSTED = 4
XATTR_INDEX_LUSTRE = 5
XATTR_INDEX_SECURITY = 6
# What the kernel shows for each short prefix index; index 0 and lustre are never listed.
XATTR_PREFIXES = {
    XATTR_INDEX_USER: b"user.",
    XATTR_INDEX_POSIX_ACL_ACCESS: b"system.posix_acl_access",
    XATTR_INDEX_POSIX_ACL_DEFAULT: b"system.posix_acl_default",
    XATTR_INDEX_TRUSTED: b"trusted.",
    XATTR_INDEX_SECURITY: b"security.",
}
XATTR_LONG_PREFIX = 0x80
XATTR_LONG_PREFIX_MASK = 0x7F
XATTR_FILTER_BITS = 32
XATTR_FILTER_SEED = 0x25BBE08F


def xattr_ibody_size(icount: int) -> int:
    """Bytes of inline xattr area for ``i_xattr_icount``."""
    return 0 if icount == 0 else XATTR_IBODY_HEADER.size + 4 * (icount - 1)


def xattr_entry_size(name_len: int, value_size: int) -> int:
    return (XATTR_ENTRY.size + name_len + value_size + 3) & ~3


# -- compression ------------------------------------------------------------
PCLUSTER_MAX_SIZE = 1024 * 1024
PCLUSTER_MAX_DSIZE = 12 * 1024 * 1024

COMPRESSION_LZ4 = 0
COMPRESSION_LZMA = 1
COMPRESSION_DEFLATE = 2
COMPRESSION_ZSTD = 3
COMPRESSION_MAX = 4
# pseudo algorithms for uncompressed (PLAIN) pclusters
COMPRESSION_SHIFTED = COMPRESSION_MAX
COMPRESSION_INTERLACED = COMPRESSION_MAX + 1
ALGORITHM_NAMES = {
    COMPRESSION_LZ4: "lz4",
    COMPRESSION_LZMA: "lzma",
    COMPRESSION_DEFLATE: "deflate",
    COMPRESSION_ZSTD: "zstd",
    COMPRESSION_SHIFTED: "plain",
    COMPRESSION_INTERLACED: "plain-interlaced",
}
# what the kernel accepts in the compression configuration records
LZMA_MIN_DICT_SIZE = 4096
LZMA_MAX_DICT_SIZE = 8 * PCLUSTER_MAX_SIZE
DEFLATE_MAX_WINDOWBITS = 15  # the kernel always inflates with this window, whatever the record says
ZSTD_WINDOWLOG_BASE = 10  # the record stores the window log less this
ZSTD_MAX_WINDOWLOG = (PCLUSTER_MAX_SIZE.bit_length() - 1) - ZSTD_WINDOWLOG_BASE

LZ4_CFGS = struct.Struct("<H H 10x")  # max_distance max_pclusterblks
LZMA_CFGS = struct.Struct("<I H 8x")  # dict_size format
DEFLATE_CFGS = struct.Struct("<B 5x")  # windowbits
ZSTD_CFGS = struct.Struct("<B B 4x")  # format windowlog (- 10)

ADVISE_COMPACTED_2B = 0x0001
ADVISE_EXTENTS = 0x0001
ADVISE_BIG_PCLUSTER_1 = 0x0002
ADVISE_BIG_PCLUSTER_2 = 0x0004
ADVISE_INLINE_PCLUSTER = 0x0008
ADVISE_INTERLACED_PCLUSTER = 0x0010
ADVISE_FRAGMENT_PCLUSTER = 0x0020
ADVISE_EXTRECSZ_BIT = 1
ADVISE_EXTRECSZ_MASK = 0x3
FRAGMENT_INODE_BIT = 7

# h_fragmentoff|(h_reserved1 h_idata_size)|h_extents_lo, h_advise, h_algorithmtype, h_clusterbits
MAP_HEADER = struct.Struct("<I H B B")
assert MAP_HEADER.size == 8

LCLUSTER_TYPE_PLAIN = 0
LCLUSTER_TYPE_HEAD1 = 1
LCLUSTER_TYPE_NONHEAD = 2
LCLUSTER_TYPE_HEAD2 = 3
LI_PARTIAL_REF = 1 << 15
LI_D0_CBLKCNT = 1 << 11
LCLUSTER_INDEX = struct.Struct("<H H I")  # di_advise di_clusterofs blkaddr|delta[2]

EXTENT_PLEN_PARTIAL = 1 << 27
EXTENT_PLEN_FMT_BIT = 28
EXTENT_PLEN_MASK = (PCLUSTER_MAX_SIZE << 1) - 1
EXTENT = struct.Struct("<I I I I I 12x")  # plen pstart_lo pstart_hi lstart_lo lstart_hi


def extent_record_size(advise: int) -> int:
    return 4 << ((advise >> ADVISE_EXTRECSZ_BIT) & ADVISE_EXTRECSZ_MASK)


def round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def decode_dev(raw: int) -> tuple[int, int]:
    """Kernel ``new_decode_dev``: the 32-bit on-disk device number to (major, minor)."""
    major = (raw & 0xFFF00) >> 8
    minor = (raw & 0xFF) | ((raw >> 12) & 0xFFF00)
    return major, minor
