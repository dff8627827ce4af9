# cython: language_level=3, boundscheck=False, wraparound=False
"""On-disk inodes, decoded into the attributes the kernel presents.

Every lookup and every readdirplus entry decodes an inode, so this is a hot
path: the raw bytes are read straight out of the cached metadata block.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from posix.stat cimport S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK

cimport ondisk as d
from littleendian cimport le16, le32, le64

from erofsfuse.erofs.errors import CorruptImage, UnsupportedFeature

ONDISK_DIGEST = d.ONDISK_DIGEST.decode()

cdef enum:
    NSEC_PER_SEC = 1000000000


cdef class Inode:
    """One decoded inode; what lies past the fixed fields is decoded on demand elsewhere."""

    cdef readonly object nid
    cdef readonly object space
    cdef readonly uint64_t iloc
    cdef readonly unsigned int isize, xattr_isize, layout, mode, chunkformat, ino32
    cdef readonly bint compact, dot_omitted
    cdef readonly uint64_t nlink, uid, gid, size, startblk, rdev, blocks
    cdef readonly int64_t mtime
    cdef readonly uint32_t mtime_nsec
    cdef public object zmap, xattr_header

    @property
    def is_dir(self):
        return self.mode & S_IFMT == S_IFDIR

    @property
    def is_reg(self):
        return self.mode & S_IFMT == S_IFREG

    @property
    def is_symlink(self):
        return self.mode & S_IFMT == S_IFLNK

    @property
    def compressed(self):
        return self.layout == d.LAYOUT_COMPRESSED_FULL or self.layout == d.LAYOUT_COMPRESSED_COMPACT

    @property
    def has_data(self):
        """Regular files, directories and symlinks carry data; devices and fifos do not."""
        cdef unsigned int fmt = self.mode & S_IFMT
        return fmt == S_IFREG or fmt == S_IFDIR or fmt == S_IFLNK

    @property
    def mtime_ns(self):
        return (<object>self.mtime) * NSEC_PER_SEC + self.mtime_nsec  # Python integers: 64-bit nanoseconds overflow

    @property
    def data_start(self):
        """Metadata position right after the inode and its inline xattrs."""
        return self.iloc + self.isize + self.xattr_isize

    @property
    def rdev_pair(self):
        """The kernel's ``new_decode_dev``: (major, minor) of a device inode."""
        return (self.rdev & 0xFFF00) >> 8, (self.rdev & 0xFF) | ((self.rdev >> 12) & 0xFFF00)

    def __repr__(self):
        return f"<Inode nid={self.nid} mode={self.mode:o} size={self.size} layout={self.layout}>"


def decode_inode(nid, space, uint64_t iloc, int64_t epoch, uint32_t fixed_nsec):
    """Decode the inode stored at ``iloc`` of ``space``, checking it as the kernel does."""
    cdef unsigned int bits = space.blkszbits
    cdef unsigned int chunk_bits = space.chunk_bits
    cdef uint64_t off = iloc & ((<uint64_t>1 << chunk_bits) - 1)
    cdef bytes raw = space.chunk(iloc >> chunk_bits)
    cdef const uint8_t *p
    if off + d.INODE_EXTENDED_SIZE > <uint64_t>len(raw):
        raw = space.read(iloc, d.INODE_COMPACT_SIZE)
        off = 0
        p = raw
        if le16(p + d.INODE_COMPACT_i_format) & d.I_VERSION_MASK:
            raw = space.read(iloc, d.INODE_EXTENDED_SIZE)
    p = <const uint8_t *>raw + off

    # the fields both versions hold at the same place (ondisk.py checks that they do)
    cdef unsigned int ifmt = le16(p + d.INODE_COMPACT_i_format)
    if ifmt & ~d.I_ALL:
        raise UnsupportedFeature(f"unsupported i_format 0x{ifmt:x} of nid {nid}")
    cdef unsigned int layout = (ifmt >> d.I_DATALAYOUT_BIT) & d.I_DATALAYOUT_MASK
    if layout > d.LAYOUT_CHUNK_BASED:
        raise UnsupportedFeature(f"unsupported data layout {layout} of nid {nid}")

    cdef Inode ino = Inode.__new__(Inode)
    ino.nid = nid
    ino.space = space
    ino.iloc = iloc
    ino.layout = layout
    ino.mode = le16(p + d.INODE_COMPACT_i_mode)
    cdef unsigned int icount = le16(p + d.INODE_COMPACT_i_xattr_icount)
    cdef unsigned int i_nb
    cdef uint32_t i_u
    cdef uint64_t startblk_hi
    cdef int addr_bits = 48
    if ifmt & d.I_VERSION_MASK:
        ino.isize = d.INODE_EXTENDED_SIZE
        ino.compact = False
        ino.size = le64(p + d.INODE_EXTENDED_i_size)
        i_u = le32(p + d.INODE_EXTENDED_i_u)
        ino.ino32 = le32(p + d.INODE_EXTENDED_i_ino)
        ino.uid = le32(p + d.INODE_EXTENDED_i_uid)
        ino.gid = le32(p + d.INODE_EXTENDED_i_gid)
        ino.mtime = <int64_t>le64(p + d.INODE_EXTENDED_i_mtime)
        ino.mtime_nsec = le32(p + d.INODE_EXTENDED_i_mtime_nsec)
        ino.nlink = le32(p + d.INODE_EXTENDED_i_nlink)
        startblk_hi = le16(p + d.INODE_EXTENDED_i_nb)
    else:
        ino.isize = d.INODE_COMPACT_SIZE
        ino.compact = True
        ino.size = le32(p + d.INODE_COMPACT_i_size)
        ino.mtime = epoch + le32(p + d.INODE_COMPACT_i_mtime)
        ino.mtime_nsec = fixed_nsec
        i_u = le32(p + d.INODE_COMPACT_i_u)
        ino.ino32 = le32(p + d.INODE_COMPACT_i_ino)
        ino.uid = le16(p + d.INODE_COMPACT_i_uid)
        ino.gid = le16(p + d.INODE_COMPACT_i_gid)
        i_nb = le16(p + d.INODE_COMPACT_i_nb)
        if ino.mode & S_IFMT != S_IFDIR and (ifmt >> d.I_NLINK_1_BIT) & 1:
            ino.nlink = 1
            startblk_hi = i_nb
        else:
            ino.nlink = i_nb
            startblk_hi = 0
            addr_bits = 32
    if ino.size >> 63:
        raise CorruptImage(f"negative i_size {<int64_t>ino.size}", nid)
    if ino.mtime_nsec >= NSEC_PER_SEC:
        raise CorruptImage(f"invalid nanoseconds {ino.mtime_nsec}", nid)
    # the header, then one 32-bit shared xattr id per count beyond the first
    ino.xattr_isize = 0 if icount == 0 else d.XATTR_IBODY_HEADER_SIZE + 4 * (icount - 1)
    ino.startblk = d.NULL_ADDR
    ino.rdev = 0
    ino.chunkformat = 0
    ino.dot_omitted = False

    cdef unsigned int fmt = ino.mode & S_IFMT
    cdef uint64_t startblk, mask
    if fmt == S_IFDIR or fmt == S_IFREG or fmt == S_IFLNK:
        if fmt == S_IFDIR:
            ino.dot_omitted = (ifmt >> d.I_DOT_OMITTED_BIT) & 1
        startblk = i_u | (startblk_hi << 32)
        mask = (<uint64_t>1 << addr_bits) - 1
        if layout == d.LAYOUT_FLAT_PLAIN and (startblk & mask) == mask:
            startblk = d.NULL_ADDR
        ino.startblk = startblk
    elif fmt == S_IFCHR or fmt == S_IFBLK:
        ino.rdev = i_u
    elif fmt != S_IFIFO and fmt != S_IFSOCK:
        raise CorruptImage(f"bogus i_mode {ino.mode:o}", nid)
    if ino.compressed and not (fmt == S_IFDIR or fmt == S_IFREG or fmt == S_IFLNK):
        raise CorruptImage("compressed layout on an inode without data", nid)
    if layout == d.LAYOUT_CHUNK_BASED:
        ino.chunkformat = i_u & 0xFFFF
        if ino.chunkformat & ~d.CHUNK_FORMAT_ALL:
            raise UnsupportedFeature(f"unsupported chunk format 0x{ino.chunkformat:x} of nid {nid}")
    if ino.compressed:
        ino.blocks = (<uint64_t>i_u) << (bits - 9)
    else:
        ino.blocks = ((ino.size + (1 << bits) - 1) >> bits) << (bits - 9)
    return ino
