"""On-disk inodes, decoded into the attributes the kernel presents."""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING

from . import ondisk as d
from .errors import CorruptImage, UnsupportedFeature

if TYPE_CHECKING:
    from .metaspace import MetaSpace

NSEC = 1_000_000_000
MAX_FILE_SIZE = (1 << 63) - 1


class Inode:
    """One decoded inode; everything past the fixed fields is decoded on demand elsewhere."""

    __slots__ = (
        "nid",
        "space",
        "iloc",
        "isize",
        "xattr_isize",
        "layout",
        "compact",
        "mode",
        "nlink",
        "uid",
        "gid",
        "size",
        "mtime",
        "mtime_nsec",
        "startblk",
        "rdev",
        "chunkformat",
        "dot_omitted",
        "blocks",
        "ino32",
        "zmap",
        "xattr_header",
    )

    def __init__(self) -> None:
        self.zmap = None
        self.xattr_header = None

    # -- classification ----------------------------------------------------
    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def compressed(self) -> bool:
        return self.layout in (d.LAYOUT_COMPRESSED_FULL, d.LAYOUT_COMPRESSED_COMPACT)

    @property
    def has_data(self) -> bool:
        """Regular files, directories and symlinks carry data; devices and fifos do not."""
        return stat.S_IFMT(self.mode) in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)

    @property
    def mtime_ns(self) -> int:
        return self.mtime * NSEC + self.mtime_nsec

    @property
    def data_start(self) -> int:
        """Metadata position right after the inode and its inline xattrs."""
        return self.iloc + self.isize + self.xattr_isize

    @property
    def rdev_pair(self) -> tuple[int, int]:
        return d.decode_dev(self.rdev)

    def __repr__(self) -> str:
        return f"<Inode nid={self.nid} mode={self.mode:o} size={self.size} layout={d.LAYOUT_NAMES.get(self.layout)}>"


def decode_inode(nid: int, space: MetaSpace, iloc: int, epoch: int, fixed_nsec: int) -> Inode:
    """Decode the inode stored at ``iloc`` of ``space``, checking it as the kernel does."""
    raw = space.read(iloc, d.INODE_COMPACT.size)
    ifmt = raw[0] | raw[1] << 8
    if ifmt & ~d.I_ALL:
        raise UnsupportedFeature(f"unsupported i_format 0x{ifmt:x} of nid {nid}")
    layout = (ifmt >> d.I_DATALAYOUT_BIT) & d.I_DATALAYOUT_MASK
    if layout > d.LAYOUT_CHUNK_BASED:
        raise UnsupportedFeature(f"unsupported data layout {layout} of nid {nid}")
    ino = Inode()
    ino.nid = nid
    ino.space = space
    ino.iloc = iloc
    ino.layout = layout
    addr_bits = 48
    if ifmt & d.I_VERSION_MASK:
        raw = space.read(iloc, d.INODE_EXTENDED.size)
        (_, icount, mode, i_nb, size, i_u, ino32, uid, gid, mtime, mtime_nsec, nlink) = d.INODE_EXTENDED.unpack(raw)
        ino.isize = d.INODE_EXTENDED.size
        ino.compact = False
        ino.mtime = mtime
        ino.mtime_nsec = mtime_nsec
        startblk_hi = i_nb
    else:
        (_, icount, mode, i_nb, size, mtime, i_u, ino32, uid, gid) = d.INODE_COMPACT.unpack(raw)
        ino.isize = d.INODE_COMPACT.size
        ino.compact = True
        ino.mtime = epoch + mtime
        ino.mtime_nsec = fixed_nsec
        if not stat.S_ISDIR(mode) and (ifmt >> d.I_NLINK_1_BIT) & 1:
            nlink = 1
            startblk_hi = i_nb
        else:
            nlink = i_nb
            startblk_hi = 0
            addr_bits = 32
    if size > MAX_FILE_SIZE:
        raise CorruptImage(f"negative i_size {size - (1 << 64)}", nid)
    if ino.mtime_nsec >= NSEC:
        raise CorruptImage(f"invalid nanoseconds {ino.mtime_nsec}", nid)
    ino.mode = mode
    ino.nlink = nlink
    ino.uid = uid
    ino.gid = gid
    ino.size = size
    ino.ino32 = ino32
    ino.xattr_isize = d.xattr_ibody_size(icount)
    ino.startblk = d.NULL_ADDR
    ino.rdev = 0
    ino.chunkformat = 0
    ino.dot_omitted = False

    fmt = stat.S_IFMT(mode)
    if fmt in (stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK):
        if fmt == stat.S_IFDIR:
            ino.dot_omitted = bool((ifmt >> d.I_DOT_OMITTED_BIT) & 1)
        startblk = i_u | startblk_hi << 32
        mask = (1 << addr_bits) - 1
        if layout == d.LAYOUT_FLAT_PLAIN and (startblk & mask) == mask:
            startblk = d.NULL_ADDR
        ino.startblk = startblk
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
        ino.rdev = i_u
    elif fmt not in (stat.S_IFIFO, stat.S_IFSOCK):
        raise CorruptImage(f"bogus i_mode {mode:o}", nid)
    if ino.compressed and fmt not in (stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK):
        raise CorruptImage("compressed layout on an inode without data", nid)

    if layout == d.LAYOUT_CHUNK_BASED:
        ino.chunkformat = i_u & 0xFFFF
        if ino.chunkformat & ~d.CHUNK_FORMAT_ALL:
            raise UnsupportedFeature(f"unsupported chunk format 0x{ino.chunkformat:x} of nid {nid}")
    if ino.compressed:
        ino.blocks = i_u << (space.blkszbits - 9)
    else:
        ino.blocks = ((size + space.block_size - 1) >> space.blkszbits) << (space.blkszbits - 9)
    return ino
