"""The EROFS on-disk format: every constant and structure layout, in one place.

Field names follow the Linux kernel's ``erofs_fs.h`` so that the two can be
read side by side. All integers are little-endian.

The native modules read the same declarations: the build turns this module
into ``native/ondisk.pxd`` (see ``cython_declarations``), so a constant or a
field offset is only ever written here. This module therefore imports nothing
but the standard library: the build loads it before the package exists.
"""

from __future__ import annotations

import hashlib
import stat
import struct


class Layout:
    """An on-disk structure: a little-endian ``struct.Struct`` codec and its fields' names and offsets.

    ``spec`` lists the fields in order as ``name:code`` with a ``struct`` code;
    a bare padding code such as ``4x`` is reserved space. ``unions`` lays other
    views over a field, alternatives separated by ``|``, as in the kernel's
    unions: ``{"h_fragmentoff": "h_extents_lo:I | h_reserved1:H h_idata_size:H"}``.
    ``unpack`` gives the values of ``names``, in order.
    """

    __slots__ = (
        "format", "iter_unpack", "names", "offsets", "pack", "pack_into", "size", "unpack", "unpack_from",
    )

    def __init__(self, spec: str, unions: dict[str, str] | None = None) -> None:
        fields = _fields(spec)
        codec = struct.Struct("<" + " ".join(code for _, code, _ in fields))
        self.size = codec.size
        self.format = codec.format
        self.names = tuple(name for name, _, _ in fields if name)
        self.offsets = {name: offset for name, _, offset in fields if name}
        for member, alternatives in (unions or {}).items():
            base = self.offsets[member]
            for alternative in alternatives.split("|"):
                for name, code, offset in _fields(alternative):
                    if base + offset + struct.calcsize("<" + code) > self.size:
                        raise ValueError(f"union member {name} runs past the end of the structure")
                    if name:
                        self.offsets[name] = base + offset
        self.pack = codec.pack
        self.pack_into = codec.pack_into
        self.unpack = codec.unpack
        self.unpack_from = codec.unpack_from
        self.iter_unpack = codec.iter_unpack


def _fields(spec: str) -> list[tuple[str, str, int]]:
    """``(name, code, offset)`` of each ``name:code`` (or bare padding code) of ``spec``."""
    fields = []
    offset = 0
    for token in spec.split():
        name, _, code = token.rpartition(":")
        size = struct.calcsize("<" + code)
        values = len(struct.unpack("<" + code, bytes(size)))
        if values != (1 if name else 0):
            raise ValueError(f"{token!r}: a named field holds one value, padding none")
        fields.append((name, code, offset))
        offset += size
    return fields


SUPER_OFFSET = 1024
SUPER_MAGIC = 0xE0F5E1E2
SB_EXTSLOT_SIZE = 16
ISLOT_BITS = 5  # nid -> byte offset: nid << 5

# -- feature bits -----------------------------------------------------------
COMPAT_SB_CHKSUM = 0x01
COMPAT_MTIME = 0x02
COMPAT_XATTR_FILTER = 0x04
COMPAT_SHARED_EA_IN_METABOX = 0x08
COMPAT_PLAIN_XATTR_PFX = 0x10
COMPAT_ISHARE_XATTRS = 0x20
COMPAT_NAMES = {
    COMPAT_SB_CHKSUM: "sb_csum",
    COMPAT_MTIME: "mtime",
    COMPAT_XATTR_FILTER: "xattr_filter",
    COMPAT_SHARED_EA_IN_METABOX: "shared_ea_in_metabox",
    COMPAT_PLAIN_XATTR_PFX: "plain_xattr_pfx",
    COMPAT_ISHARE_XATTRS: "ishare_xattrs",
}

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
SUPERBLOCK = Layout(
    "magic:I checksum:I feature_compat:I blkszbits:B sb_extslots:B rootnid_2b:H inos:Q epoch:q fixed_nsec:I "
    "blocks_lo:I meta_blkaddr:I xattr_blkaddr:I uuid:16s volume_name:16s feature_incompat:I u1:H "
    "extra_devices:H devt_slotoff:H dirblkbits:B xattr_prefix_count:B xattr_prefix_start:I packed_nid:Q "
    "xattr_filter_reserved:B ishare_xattr_prefix_id:B 2x build_time:I rootnid_8b:Q 8x metabox_nid:Q 8x"
)
SUPERBLOCK_FIELDS = list(SUPERBLOCK.names)
SUPERBLOCK_CHECKSUM_OFFSET = SUPERBLOCK.offsets["checksum"]
assert SUPERBLOCK.size == 144

DEVICE_SLOT = Layout("tag:64s blocks_lo:I uniaddr_lo:I blocks_hi:H uniaddr_hi:H 52x")
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

# i_nb: nlink (directories, or without I_NLINK_1_BIT) or the block address's upper 16 bits;
# i_u: the block address's lower 32 bits, a device number, compressed blocks or the chunk format
INODE_COMPACT = Layout(
    "i_format:H i_xattr_icount:H i_mode:H i_nb:H i_size:I i_mtime:I i_u:I i_ino:I i_uid:H i_gid:H 4x"
)
INODE_EXTENDED = Layout(
    "i_format:H i_xattr_icount:H i_mode:H i_nb:H i_size:Q i_u:I i_ino:I i_uid:I i_gid:I "
    "i_mtime:q i_mtime_nsec:I i_nlink:I 16x"
)
assert INODE_COMPACT.size == 32 and INODE_EXTENDED.size == 64
# both versions start alike, so i_format (which tells them apart) is read before knowing which
assert all(INODE_COMPACT.offsets[f] == INODE_EXTENDED.offsets[f] for f in ("i_format", "i_xattr_icount", "i_mode"))

NULL_ADDR = (1 << 64) - 1

CHUNK_FORMAT_BLKBITS_MASK = 0x001F
CHUNK_FORMAT_INDEXES = 0x0020
CHUNK_FORMAT_48BIT = 0x0040
CHUNK_FORMAT_ALL = (CHUNK_FORMAT_48BIT << 1) - 1
BLOCK_MAP_ENTRY = Layout("blkaddr:I")
CHUNK_INDEX = Layout("startblk_hi:H device_id:H startblk_lo:I")
LE16 = struct.Struct("<H")  # the length in front of a compression configuration or a long xattr prefix

# -- directories ------------------------------------------------------------
DIRENT = Layout("nid:Q nameoff:H file_type:B x")
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
XATTR_IBODY_HEADER = Layout("h_name_filter:I h_shared_count:B 7x")  # then h_shared_count 32-bit ids
XATTR_ENTRY = Layout("e_name_len:B e_name_index:B e_value_size:H")
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

LZ4_CFGS = Layout("max_distance:H max_pclusterblks:H 10x")
LZMA_CFGS = Layout("dict_size:I format:H 8x")
DEFLATE_CFGS = Layout("windowbits:B 5x")
ZSTD_CFGS = Layout("format:B windowlog:B 4x")  # windowlog less ZSTD_WINDOWLOG_BASE

ADVISE_COMPACTED_2B = 0x0001
ADVISE_EXTENTS = 0x0001
ADVISE_BIG_PCLUSTER_1 = 0x0002
ADVISE_BIG_PCLUSTER_2 = 0x0004
ADVISE_INLINE_PCLUSTER = 0x0008
ADVISE_INTERLACED_PCLUSTER = 0x0010
ADVISE_FRAGMENT_PCLUSTER = 0x0020
ADVISE_EXTRECSZ_BIT = 1  # extent records are 4 << ((h_advise >> BIT) & MASK) bytes
ADVISE_EXTRECSZ_MASK = 0x3
FRAGMENT_INODE_BIT = 7  # in h_clusterbits: the whole file lives in the packed inode
CLUSTERBITS_MASK = 0x0F  # in h_clusterbits: lcluster bits less the block size bits
ALGORITHM_HEAD2_SHIFT = 4  # h_algorithmtype: HEAD1's algorithm in the low bits, HEAD2's above

# The map header follows the inode's xattrs, aligned to its own size; the full
# indexes start FULL_INDEX_GAP bytes past its end, compact indexes and extent
# records right at it (the records aligned to their size).
MAP_HEADER = Layout(
    "h_fragmentoff:I h_advise:H h_algorithmtype:B h_clusterbits:B",
    unions={"h_fragmentoff": "h_extents_lo:I | h_reserved1:H h_idata_size:H", "h_algorithmtype": "h_extents_hi:H"},
)
assert MAP_HEADER.size == 8
FULL_INDEX_GAP = 8

LCLUSTER_TYPE_PLAIN = 0
LCLUSTER_TYPE_HEAD1 = 1
LCLUSTER_TYPE_NONHEAD = 2
LCLUSTER_TYPE_HEAD2 = 3
LI_LCLUSTER_TYPE_MASK = 0x3  # in di_advise (and in each compact index)
LI_PARTIAL_REF = 1 << 15
LI_D0_CBLKCNT = 1 << 11
LCLUSTER_INDEX = Layout("di_advise:H di_clusterofs:H di_u:I", unions={"di_u": "di_blkaddr:I | di_delta0:H di_delta1:H"})

EXTENT_PLEN_PARTIAL = 1 << 27
EXTENT_PLEN_FMT_BIT = 28
EXTENT_PLEN_MASK = (PCLUSTER_MAX_SIZE << 1) - 1
EXTENT = Layout("plen:I pstart_lo:I pstart_hi:I lstart_lo:I lstart_hi:I 12x")  # or a prefix of 4, 8 or 16 bytes


def round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


# -- the native modules' view ------------------------------------------------
def _cython_constants() -> list[tuple[str, str]]:
    """``(Cython name, C literal)`` of every integer constant and of each structure's size and field offsets."""
    constants = []
    for name, value in globals().items():
        if name.startswith("_") or not name.isupper():
            continue
        if isinstance(value, Layout):
            constants.append((f"{name}_SIZE", value.size))
            constants += [(f"{name}_{field}", offset) for field, offset in value.offsets.items()]
        elif isinstance(value, int) and not isinstance(value, bool):
            constants.append((name, value))
    if any(not 0 <= value < 1 << 64 for _, value in constants):
        raise ValueError("a constant does not fit a uint64_t")
    return [(name, f"{value}" if value < 1 << 31 else f"{value}ULL") for name, value in constants]


def declarations_digest() -> str:
    """What identifies the declarations: native modules built from them carry it as ``ONDISK_DIGEST``."""
    text = "\n".join(f"{name} {literal}" for name, literal in _cython_constants())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cython_declarations() -> str:
    """This module as the native code sees it: the text of ``native/ondisk.pxd``, which the build writes.

    Constants keep their names; a structure ``S`` gives ``S_SIZE`` and an
    ``S_field`` offset per field. Values that do not fit a C ``int`` are
    ``uint64_t``. ``ONDISK_DIGEST`` tells a module built from an older version
    of this file apart.
    """
    constants = _cython_constants()
    return "\n".join([
        "# Generated by setup.py from erofsfuse/erofs/ondisk.py: edit that file, not this one.",
        "from libc.stdint cimport uint64_t",
        "",
        "cdef extern from *:",
        '    """',
        *(f"    #define EROFS_{name} {literal}" for name, literal in constants),
        f'    #define EROFS_ONDISK_DIGEST "{declarations_digest()}"',
        '    """',
        '    const char *ONDISK_DIGEST "EROFS_ONDISK_DIGEST"',
        *(f'    const uint64_t {name} "EROFS_{name}"' for name, literal in constants if literal.endswith("ULL")),
        "    enum:",
        *(f'        {name} "EROFS_{name}"' for name, literal in constants if not literal.endswith("ULL")),
        "",
    ])
