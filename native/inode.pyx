# cython: language_level=3, boundscheck=False, wraparound=False
"""On-disk inodes, decoded into the attributes the kernel presents.

Every lookup and every readdirplus entry decodes an inode, so this is a hot
path: the raw bytes are read straight out of the cached metadata block.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

from erofsfuse.erofs.errors import CorruptImage, UnsupportedFeature

DEF COMPACT_SIZE = 32
DEF EXTENDED_SIZE = 64
DEF I_VERSION_MASK = 0x01
DEF I_DATALAYOUT_BIT = 1
DEF I_DATALAYOUT_MASK = 0x07
DEF I_NLINK_1_BIT = 4
DEF I_DOT_OMITTED_BIT = 4
DEF I_ALL = 0x1F
DEF LAYOUT_FLAT_PLAIN = 0
DEF LAYOUT_COMPRESSED_FULL = 1
DEF LAYOUT_COMPRESSED_COMPACT = 3
DEF LAYOUT_CHUNK_BASED = 4
DEF CHUNK_FORMAT_ALL = 0x7F
DEF S_IFMT = 0o170000
DEF S_IFSOCK = 0o140000
DEF S_IFLNK = 0o120000
DEF S_IFREG = 0o100000
DEF S_IFBLK = 0o060000
DEF S_IFDIR = 0o040000
DEF S_IFCHR = 0o020000
DEF S_IFIFO = 0o010000
DEF NSEC = 1000000000

NULL_ADDR = 0xFFFFFFFFFFFFFFFF


cdef inline uint16_t le16(const uint8_t *p) noexcept:
    return p[0] | (<uint16_t>p[1] << 8)


cdef inline uint32_t le32(const uint8_t *p) noexcept:
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint64_t le64(const uint8_t *p) noexcept:
    return le32(p) | (<uint64_t>le32(p + 4) << 32)


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
        return self.layout == LAYOUT_COMPRESSED_FULL or self.layout == LAYOUT_COMPRESSED_COMPACT

    @property
    def has_data(self):
        """Regular files, directories and symlinks carry data; devices and fifos do not."""
        cdef unsigned int fmt = self.mode & S_IFMT
        return fmt == S_IFREG or fmt == S_IFDIR or fmt == S_IFLNK

    @property
    def mtime_ns(self):
        return (<object>self.mtime) * NSEC + self.mtime_nsec  # Python integers: 64-bit nanoseconds overflow

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
    if off + EXTENDED_SIZE > <uint64_t>len(raw):
        raw = space.read(iloc, COMPACT_SIZE)
        off = 0
        p = raw
        if le16(p) & I_VERSION_MASK:
            raw = space.read(iloc, EXTENDED_SIZE)
    p = <const uint8_t *>raw + off

    cdef unsigned int ifmt = le16(p)
    if ifmt & ~I_ALL:
        raise UnsupportedFeature(f"unsupported i_format 0x{ifmt:x} of nid {nid}")
    cdef unsigned int layout = (ifmt >> I_DATALAYOUT_BIT) & I_DATALAYOUT_MASK
    if layout > LAYOUT_CHUNK_BASED:
        raise UnsupportedFeature(f"unsupported data layout {layout} of nid {nid}")

    cdef Inode ino = Inode.__new__(Inode)
    ino.nid = nid
    ino.space = space
    ino.iloc = iloc
    ino.layout = layout
    ino.mode = le16(p + 4)
    cdef unsigned int icount = le16(p + 2)
    cdef unsigned int i_nb = le16(p + 6)
    cdef uint32_t i_u
    cdef uint64_t startblk_hi
    cdef int addr_bits = 48
    if ifmt & I_VERSION_MASK:
        ino.isize = EXTENDED_SIZE
        ino.compact = False
        ino.size = le64(p + 8)
        i_u = le32(p + 16)
        ino.ino32 = le32(p + 20)
        ino.uid = le32(p + 24)
        ino.gid = le32(p + 28)
        ino.mtime = <int64_t>le64(p + 32)
        ino.mtime_nsec = le32(p + 40)
        ino.nlink = le32(p + 44)
        startblk_hi = i_nb
    else:
        ino.isize = COMPACT_SIZE
        ino.compact = True
        ino.size = le32(p + 8)
        ino.mtime = epoch + le32(p + 12)
        ino.mtime_nsec = fixed_nsec
        i_u = le32(p + 16)
        ino.ino32 = le32(p + 20)
        ino.uid = le16(p + 24)
        ino.gid = le16(p + 26)
        if ino.mode & S_IFMT != S_IFDIR and (ifmt >> I_NLINK_1_BIT) & 1:
            ino.nlink = 1
            startblk_hi = i_nb
        else:
            ino.nlink = i_nb
            startblk_hi = 0
            addr_bits = 32
    if ino.size >> 63:
        raise CorruptImage(f"negative i_size {<int64_t>ino.size}", nid)
    if ino.mtime_nsec >= NSEC:
        raise CorruptImage(f"invalid nanoseconds {ino.mtime_nsec}", nid)
    ino.xattr_isize = 0 if icount == 0 else 12 + 4 * (icount - 1)
    ino.startblk = NULL_ADDR
    ino.rdev = 0
    ino.chunkformat = 0
    ino.dot_omitted = False

    cdef unsigned int fmt = ino.mode & S_IFMT
    cdef uint64_t startblk, mask
    if fmt == S_IFDIR or fmt == S_IFREG or fmt == S_IFLNK:
        if fmt == S_IFDIR:
            ino.dot_omitted = (ifmt >> I_DOT_OMITTED_BIT) & 1
        startblk = i_u | (startblk_hi << 32)
        mask = (<uint64_t>1 << addr_bits) - 1
        if layout == LAYOUT_FLAT_PLAIN and (startblk & mask) == mask:
            startblk = NULL_ADDR
        ino.startblk = startblk
    elif fmt == S_IFCHR or fmt == S_IFBLK:
        ino.rdev = i_u
    elif fmt != S_IFIFO and fmt != S_IFSOCK:
        raise CorruptImage(f"bogus i_mode {ino.mode:o}", nid)
    if ino.compressed and not (fmt == S_IFDIR or fmt == S_IFREG or fmt == S_IFLNK):
        raise CorruptImage("compressed layout on an inode without data", nid)
    if layout == LAYOUT_CHUNK_BASED:
        ino.chunkformat = i_u & 0xFFFF
        if ino.chunkformat & ~CHUNK_FORMAT_ALL:
            raise UnsupportedFeature(f"unsupported chunk format 0x{ino.chunkformat:x} of nid {nid}")
    if ino.compressed:
        ino.blocks = (<uint64_t>i_u) << (bits - 9)
    else:
        ino.blocks = ((ino.size + (1 << bits) - 1) >> bits) << (bits - 9)
    return ino
