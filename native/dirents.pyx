# cython: language_level=3, boundscheck=False, wraparound=False
"""Directory blocks: parsing, checking and binary search of sorted dirents.

A directory block holds ``n`` dirents (nid, nameoff, file_type) followed by
their names, sorted by bytes. ``n`` is the first nameoff / the dirent size;
name ``i`` runs to nameoff ``i+1``, the last one to a NUL or the block's end.
"""

from libc.stdint cimport uint8_t
from libc.string cimport memcmp, memchr

cimport ondisk as d
from littleendian cimport le16, le64

from erofsfuse.erofs.errors import CorruptImage

ONDISK_DIGEST = d.ONDISK_DIGEST.decode()


cdef Py_ssize_t dirent_count(const uint8_t *blk, Py_ssize_t maxsize) except -1:
    if maxsize < d.DIRENT_SIZE:
        raise CorruptImage(f"directory block of {maxsize} bytes cannot hold a dirent")
    cdef Py_ssize_t nameoff = le16(blk + d.DIRENT_nameoff)
    if nameoff < d.DIRENT_SIZE or nameoff >= maxsize:
        raise CorruptImage(f"invalid first name offset {nameoff} in a directory block of {maxsize} bytes")
    return nameoff // d.DIRENT_SIZE


cdef int name_span(const uint8_t *blk, Py_ssize_t i, Py_ssize_t n, Py_ssize_t maxsize,
                   Py_ssize_t *start, Py_ssize_t *length) except -1:
    cdef Py_ssize_t nameoff = le16(blk + i * d.DIRENT_SIZE + d.DIRENT_nameoff), end
    cdef const uint8_t *nul
    if nameoff < n * d.DIRENT_SIZE or nameoff >= maxsize:
        raise CorruptImage(f"dirent {i}: name offset {nameoff} outside the name area")
    if i + 1 < n:
        end = le16(blk + (i + 1) * d.DIRENT_SIZE + d.DIRENT_nameoff)
        if end < nameoff:
            raise CorruptImage(f"dirent {i}: name offsets out of order ({nameoff} then {end})")
        if end > maxsize:
            raise CorruptImage(f"dirent {i}: name ends at {end}, past the block's {maxsize} bytes")
    else:
        nul = <const uint8_t *>memchr(blk + nameoff, 0, maxsize - nameoff)
        end = maxsize if nul == NULL else nul - blk
    length[0] = end - nameoff
    start[0] = nameoff
    if length[0] == 0 or length[0] > d.NAME_LEN:
        raise CorruptImage(f"dirent {i}: invalid name length {length[0]}")
    return 0


cdef inline int namecmp(const uint8_t *a, Py_ssize_t alen, const uint8_t *b, Py_ssize_t blen) noexcept:
    cdef Py_ssize_t n = alen if alen < blen else blen
    cdef int c = memcmp(a, b, n)
    if c:
        return c
    return (alen > blen) - (alen < blen)


def entries(const uint8_t[::1] block, Py_ssize_t maxsize, bint check=False, Py_ssize_t base=0,
            type record=tuple):
    """All dirents of a block as ``record((name, nid, file_type, position))``, in on-disk order.

    ``position`` is the dirent's byte position in the directory, ``base`` being
    the block's; ``record`` is a tuple type (a named tuple for the callers).
    With ``check`` also verify what a reader would otherwise trust: strictly
    increasing names and no ``/`` or NUL inside a name.
    """
    cdef const uint8_t *blk = &block[0]
    cdef Py_ssize_t n, i, start = 0, length = 0, pstart = 0, plen = 0
    if maxsize > block.shape[0]:
        maxsize = block.shape[0]
    n = dirent_count(blk, maxsize)
    out = []
    for i in range(n):
        name_span(blk, i, n, maxsize, &start, &length)
        if check:
            if memchr(blk + start, ord('/'), length) != NULL or memchr(blk + start, 0, length) != NULL:
                raise CorruptImage(f"dirent {i}: name contains '/' or NUL")
            if i and namecmp(blk + pstart, plen, blk + start, length) >= 0:
                raise CorruptImage(f"dirent {i}: names are not in sorted order")
        out.append(tuple.__new__(record, (bytes(blk[start:start + length]), le64(blk + i * d.DIRENT_SIZE + d.DIRENT_nid),
                                          blk[i * d.DIRENT_SIZE + d.DIRENT_file_type], base + i * d.DIRENT_SIZE)))
        pstart = start
        plen = length
    return out


def compare_first(const uint8_t[::1] block, Py_ssize_t maxsize, const uint8_t[::1] name):
    """Compare ``name`` with the block's first name (negative: ``name`` sorts before it)."""
    cdef const uint8_t *blk = &block[0]
    cdef Py_ssize_t n, start = 0, length = 0
    if maxsize > block.shape[0]:
        maxsize = block.shape[0]
    n = dirent_count(blk, maxsize)
    name_span(blk, 0, n, maxsize, &start, &length)
    return namecmp(&name[0], name.shape[0], blk + start, length)


def find(const uint8_t[::1] block, Py_ssize_t maxsize, const uint8_t[::1] name):
    """Binary search for ``name``; returns ``(nid, file_type)`` or ``None``."""
    cdef const uint8_t *blk = &block[0]
    cdef Py_ssize_t n, lo = 0, hi, mid, start = 0, length = 0
    cdef int c
    if maxsize > block.shape[0]:
        maxsize = block.shape[0]
    n = dirent_count(blk, maxsize)
    hi = n - 1
    while lo <= hi:
        mid = lo + (hi - lo) // 2
        name_span(blk, mid, n, maxsize, &start, &length)
        c = namecmp(&name[0], name.shape[0], blk + start, length)
        if c == 0:
            return (le64(blk + mid * d.DIRENT_SIZE + d.DIRENT_nid), blk[mid * d.DIRENT_SIZE + d.DIRENT_file_type])
        if c < 0:
            hi = mid - 1
        else:
            lo = mid + 1
    return None
