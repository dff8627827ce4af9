# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Logical-to-physical mapping of compressed inodes (the kernel's z_erofs_map_blocks).

The index area of an inode is read through ``fetch(index)``, the shared
metadata chunks of the inode's metadata space, so a huge or hostile index
never has to be loaded whole; a chunk is only borrowed for one lookup, so
cached inodes pin no metadata. Every loop is bounded by the largest extent EROFS allows
(12 MiB decoded), so corrupt delta chains end in ``CorruptImage``, not a hang.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

cimport ondisk as d
from littleendian cimport le16, le32, le64

from erofsfuse.erofs.errors import CorruptImage, UnsupportedFeature

ONDISK_DIGEST = d.ONDISK_DIGEST.decode()

# map flags returned by ZMap.map()
cpdef enum:
    MAPPED = 1
    INLINE = 2        # pcluster stored in metadata right after the indexes (ztailpacking)
    FRAGMENT = 4      # data lives in the packed inode at fragmentoff
    PARTIAL_REF = 8   # the extent is a prefix of the pcluster's output (dedupe)
    FULL_MAPPED = 16  # llen is the whole decoded length of the pcluster


cdef inline uint64_t map_header_pos(uint64_t data_start) noexcept:
    """The map header follows the inode's xattrs, aligned to its size."""
    return (data_start + d.MAP_HEADER_SIZE - 1) & ~(<uint64_t>d.MAP_HEADER_SIZE - 1)


cdef class ZMap:
    """The compressed-data map of one inode; ``map(offset)`` returns the extent holding it."""

    cdef object fetch
    cdef bytes block
    cdef const uint8_t *block_ptr
    cdef int64_t block_no
    cdef Py_ssize_t block_len
    cdef unsigned int chunk_bits

    cdef readonly uint64_t nid, size, data_start, fragmentoff, tail_headlcn, inline_pos, extent_count
    cdef readonly unsigned int blkszbits, lclusterbits, advise, inline_size, alg_head1, alg_head2, algorithms
    cdef readonly bint compact, all_fragment, initialized, extents_format
    cdef uint64_t ebase, totalidx
    cdef unsigned int compacted_4b_initial, compacted_2b

    # the lcluster recorder (kernel's z_erofs_maprecorder)
    cdef uint64_t m_lcn, m_pblk, m_compressedblks, m_nextpackoff
    cdef unsigned int m_type, m_headtype, m_clusterofs, m_delta0, m_delta1
    cdef bint m_partialref

    def __init__(self, uint64_t nid, int layout, uint64_t size, uint64_t data_start,
                 unsigned int blkszbits, unsigned int algorithms, fetch, unsigned int chunk_bits):
        self.nid = nid
        self.compact = layout == d.LAYOUT_COMPRESSED_COMPACT
        self.size = size
        self.data_start = data_start
        self.blkszbits = blkszbits
        self.algorithms = algorithms
        self.fetch = fetch
        self.chunk_bits = chunk_bits
        self.block_no = -1
        self.initialized = False

    # -- metadata access ---------------------------------------------------
    cdef const uint8_t *at(self, uint64_t pos, unsigned int length) except NULL:
        cdef int64_t blkno = pos >> self.chunk_bits
        cdef uint64_t off = pos & ((<uint64_t>1 << self.chunk_bits) - 1)
        if blkno != self.block_no:
            data = self.fetch(blkno)
            self.block = data
            self.block_ptr = self.block
            self.block_len = len(self.block)
            self.block_no = blkno
        if off + length > <uint64_t>self.block_len:
            raise CorruptImage("compression index crosses the end of its metadata", self.nid)
        return self.block_ptr + off

    cdef corrupt(self, str message, uint64_t lcn):
        raise CorruptImage(message, self.nid, f"lcluster {lcn}")

    # -- map header ----------------------------------------------------------
    cdef int init(self) except -1:
        cdef uint64_t pos = map_header_pos(self.data_start)
        cdef const uint8_t *h = self.at(pos, d.MAP_HEADER_SIZE)
        cdef unsigned int clusterbits = h[d.MAP_HEADER_h_clusterbits]
        if clusterbits >> d.FRAGMENT_INODE_BIT:
            self.all_fragment = True
            self.advise = d.ADVISE_FRAGMENT_PCLUSTER
            # the header as one 64-bit offset, less the bit that said so
            self.fragmentoff = le64(h) ^ (<uint64_t>1 << (8 * d.MAP_HEADER_h_clusterbits + d.FRAGMENT_INODE_BIT))
            self.tail_headlcn = 0
            self.initialized = True
            return 0
        self.advise = le16(h + d.MAP_HEADER_h_advise)
        self.lclusterbits = self.blkszbits + (clusterbits & d.CLUSTERBITS_MASK)
        if self.lclusterbits > 30:
            raise CorruptImage(f"logical cluster bits {self.lclusterbits} are out of range", self.nid)
        if not self.compact and (self.advise & d.ADVISE_EXTENTS):
            self.extents_format = True
            self.extent_count = le32(h + d.MAP_HEADER_h_extents_lo) | (<uint64_t>le16(h + d.MAP_HEADER_h_extents_hi) << 32)
            self.initialized = True
            return 0
        self.alg_head1 = h[d.MAP_HEADER_h_algorithmtype] & ((1 << d.ALGORITHM_HEAD2_SHIFT) - 1)
        self.alg_head2 = h[d.MAP_HEADER_h_algorithmtype] >> d.ALGORITHM_HEAD2_SHIFT
        if self.advise & d.ADVISE_FRAGMENT_PCLUSTER:
            self.fragmentoff = le32(h + d.MAP_HEADER_h_fragmentoff)
        elif self.advise & d.ADVISE_INLINE_PCLUSTER:
            self.inline_size = le16(h + d.MAP_HEADER_h_idata_size)
        if self.compact and ((not (self.advise & d.ADVISE_BIG_PCLUSTER_1)) != (not (self.advise & d.ADVISE_BIG_PCLUSTER_2))):
            raise CorruptImage("big pcluster head1/head2 flags of compact indexes disagree", self.nid)
        if self.compact:
            self.ebase = pos + d.MAP_HEADER_SIZE
            self.totalidx = (self.size + (1 << self.blkszbits) - 1) >> self.blkszbits
            self.compacted_4b_initial = ((32 - self.ebase % 32) // 4) & 7
            self.compacted_2b = 0
            if (self.advise & d.ADVISE_COMPACTED_2B) and self.compacted_4b_initial < self.totalidx:
                self.compacted_2b = ((self.totalidx - self.compacted_4b_initial) // 16) * 16
        else:
            self.ebase = pos + d.MAP_HEADER_SIZE + d.FULL_INDEX_GAP
        self.initialized = True
        if self.inline_size or (self.advise & d.ADVISE_FRAGMENT_PCLUSTER):
            self.find_tail()
        return 0

    cdef int find_tail(self) except -1:
        """Locate the tail extent (kernel's EROFS_GET_BLOCKS_FINDTAIL)."""
        cdef uint64_t la, llen, pa, plen
        cdef unsigned int alg, flags
        self.tail_headlcn = d.NULL_ADDR  # nothing is the tail yet
        self.map_lclusters(self.size - 1, True, &la, &llen, &pa, &plen, &alg, &flags)
        return 0

    # -- lcluster loading ------------------------------------------------------
    cdef int load_full(self, uint64_t lcn) except -1:
        cdef uint64_t pos = self.ebase + lcn * d.LCLUSTER_INDEX_SIZE
        cdef const uint8_t *di = self.at(pos, d.LCLUSTER_INDEX_SIZE)
        cdef unsigned int advise = le16(di + d.LCLUSTER_INDEX_di_advise)
        self.m_lcn = lcn
        self.m_nextpackoff = pos + d.LCLUSTER_INDEX_SIZE
        self.m_type = advise & d.LI_LCLUSTER_TYPE_MASK
        if self.m_type == d.LCLUSTER_TYPE_NONHEAD:
            self.m_clusterofs = 1 << self.lclusterbits
            self.m_delta0 = le16(di + d.LCLUSTER_INDEX_di_delta0)
            if self.m_delta0 & d.LI_D0_CBLKCNT:
                if not (self.advise & (d.ADVISE_BIG_PCLUSTER_1 | d.ADVISE_BIG_PCLUSTER_2)):
                    self.corrupt("compressed block count without big pclusters", lcn)
                self.m_compressedblks = self.m_delta0 & ~d.LI_D0_CBLKCNT
                self.m_delta0 = 1
            self.m_delta1 = le16(di + d.LCLUSTER_INDEX_di_delta1)
        else:
            self.m_partialref = (advise & d.LI_PARTIAL_REF) != 0
            self.m_clusterofs = le16(di + d.LCLUSTER_INDEX_di_clusterofs)
            self.m_pblk = le32(di + d.LCLUSTER_INDEX_di_blkaddr)
        return 0

    cdef inline unsigned int compacted_bits(self, unsigned int lobits, const uint8_t *pack,
                                            unsigned int bitpos, unsigned int *ltype) noexcept:
        cdef uint32_t v = le32(pack + bitpos // 8) >> (bitpos & 7)
        ltype[0] = (v >> lobits) & d.LI_LCLUSTER_TYPE_MASK
        return v & ((1 << lobits) - 1)

    cdef unsigned int lookahead_distance(self, unsigned int lobits, unsigned int encodebits,
                                         unsigned int vcnt, const uint8_t *pack, int i) noexcept:
        cdef unsigned int lo = 0, d1 = 0, ltype
        while True:
            lo = self.compacted_bits(lobits, pack, encodebits * i, &ltype)
            if ltype != d.LCLUSTER_TYPE_NONHEAD:
                return d1
            d1 += 1
            i += 1
            if i >= <int>vcnt:
                break
        if not (lo & d.LI_D0_CBLKCNT):
            d1 += lo - 1
        return d1

    cdef int load_compact(self, uint64_t lcn, bint lookahead) except -1:
        cdef unsigned int bits = self.lclusterbits
        cdef unsigned int amortizedshift = 2, vcnt, lobits, encodebits, lo, ltype, packsize
        cdef uint64_t pos = self.ebase, rel = lcn, nblk
        cdef bint big = (self.advise & d.ADVISE_BIG_PCLUSTER_1) != 0
        cdef const uint8_t *pack
        cdef int i
        if lcn >= self.totalidx or bits > 14:
            self.corrupt("lcluster index out of range", lcn)
        self.m_lcn = lcn
        if rel >= self.compacted_4b_initial:
            pos += self.compacted_4b_initial * 4
            rel -= self.compacted_4b_initial
            if rel < self.compacted_2b:
                amortizedshift = 1
            else:
                pos += self.compacted_2b * 2
                rel -= self.compacted_2b
        pos += rel << amortizedshift
        if amortizedshift == 2 and bits <= 14:
            vcnt = 2
        elif amortizedshift == 1 and bits <= 12:
            vcnt = 16
        else:
            raise UnsupportedFeature(f"compact 2-byte indexes with {bits}-bit lclusters (nid {self.nid})")
        packsize = vcnt << amortizedshift
        pack = self.at(pos - (pos % packsize), packsize)
        self.m_nextpackoff = pos - (pos % packsize) + packsize
        lobits = bits if bits > 12 else 12
        encodebits = ((packsize - 4) * 8) // vcnt
        i = <int>((pos % packsize) >> amortizedshift)

        lo = self.compacted_bits(lobits, pack, encodebits * i, &ltype)
        self.m_type = ltype
        if ltype == d.LCLUSTER_TYPE_NONHEAD:
            self.m_clusterofs = 1 << bits
            if lookahead:
                self.m_delta1 = self.lookahead_distance(lobits, encodebits, vcnt, pack, i)
            if lo & d.LI_D0_CBLKCNT:
                if not big:
                    self.corrupt("compressed block count without big pclusters", lcn)
                self.m_compressedblks = lo & ~d.LI_D0_CBLKCNT
                self.m_delta0 = 1
                return 0
            if i + 1 != <int>vcnt:
                self.m_delta0 = lo
                return 0
            # the last lcluster of a pack stores delta[1]; derive delta[0] from its neighbour
            lo = self.compacted_bits(lobits, pack, encodebits * (i - 1), &ltype)
            if ltype != d.LCLUSTER_TYPE_NONHEAD:
                lo = 0
            elif lo & d.LI_D0_CBLKCNT:
                lo = 1
            self.m_delta0 = lo + 1
            return 0
        self.m_clusterofs = lo
        self.m_delta0 = 0
        # the head's block address: the pack's base address plus the pclusters before it
        if not big:
            nblk = 1
            while i > 0:
                i -= 1
                lo = self.compacted_bits(lobits, pack, encodebits * i, &ltype)
                if ltype == d.LCLUSTER_TYPE_NONHEAD:
                    i -= <int>lo
                if i >= 0:
                    nblk += 1
        else:
            nblk = 0
            while i > 0:
                i -= 1
                lo = self.compacted_bits(lobits, pack, encodebits * i, &ltype)
                if ltype == d.LCLUSTER_TYPE_NONHEAD:
                    if lo & d.LI_D0_CBLKCNT:
                        i -= 1
                        nblk += lo & ~d.LI_D0_CBLKCNT
                        continue
                    if lo <= 1:
                        self.corrupt("big pcluster with a plain delta of 1", lcn)
                    i -= <int>lo - 2
                    continue
                nblk += 1
        self.m_pblk = le32(pack + packsize - 4) + nblk
        return 0

    cdef int load(self, uint64_t lcn, bint lookahead) except -1:
        if self.compact:
            self.load_compact(lcn, lookahead)
        else:
            self.load_full(lcn)
        if self.m_type != d.LCLUSTER_TYPE_NONHEAD and self.m_clusterofs >= (1u << self.lclusterbits):
            self.corrupt(f"cluster offset {self.m_clusterofs} beyond the lcluster", lcn)
        return 0

    # -- extent assembly -------------------------------------------------------
    cdef uint64_t lookback(self, unsigned int distance) except? 0xFFFFFFFFFFFFFFFF:
        """Walk back to the HEAD lcluster of the extent; returns its logical start."""
        cdef uint64_t start_lcn = self.m_lcn, lcn
        cdef uint64_t limit = (d.PCLUSTER_MAX_DSIZE >> self.lclusterbits) + 2
        while self.m_lcn >= distance and distance:
            lcn = self.m_lcn - distance
            if start_lcn - lcn > limit:
                break
            self.load(lcn, False)
            if self.m_type == d.LCLUSTER_TYPE_NONHEAD:
                distance = self.m_delta0
                continue
            self.m_headtype = self.m_type
            return (lcn << self.lclusterbits) | self.m_clusterofs
        self.corrupt(f"bogus lookback distance {distance}", self.m_lcn)
        return 0

    cdef int compressed_length(self, uint64_t *plen) except -1:
        cdef bint big1 = (self.advise & d.ADVISE_BIG_PCLUSTER_1) != 0
        cdef bint big2 = (self.advise & d.ADVISE_BIG_PCLUSTER_2) != 0
        cdef uint64_t lcn = self.m_lcn + 1
        if ((self.m_headtype == d.LCLUSTER_TYPE_HEAD1 and not big1) or
                ((self.m_headtype == d.LCLUSTER_TYPE_PLAIN or self.m_headtype == d.LCLUSTER_TYPE_HEAD2) and not big2) or
                (lcn << self.lclusterbits) >= self.size):
            self.m_compressedblks = 1
        if not self.m_compressedblks:
            self.load(lcn, False)
            if self.m_type == d.LCLUSTER_TYPE_NONHEAD:
                if self.m_delta0 != 1:
                    self.corrupt("bogus compressed block count", lcn)
                if not self.m_compressedblks:
                    self.corrupt("missing compressed block count", lcn)
            else:
                self.m_compressedblks = 1
        plen[0] = self.m_compressedblks << self.blkszbits
        return 0

    cdef uint64_t decoded_length(self, uint64_t la) except? 0xFFFFFFFFFFFFFFFF:
        """Walk forward to the next HEAD lcluster: the extent's whole decoded length."""
        cdef unsigned int bits = self.lclusterbits
        cdef uint64_t headlcn = la >> bits, lcn = headlcn
        while True:
            if (lcn << bits) >= self.size:
                return self.size - la
            if (lcn << bits) > la + d.PCLUSTER_MAX_DSIZE:
                self.corrupt("extent decodes to more than 12 MiB", lcn)
            self.load(lcn, True)
            if self.m_type == d.LCLUSTER_TYPE_NONHEAD:
                if not self.m_delta1:
                    self.m_delta1 = 1
            elif lcn != headlcn:
                break
            else:
                self.m_delta1 = 1
            lcn += self.m_delta1
        return (lcn << bits) + self.m_clusterofs - la

    cdef int map_lclusters(self, uint64_t ofs, bint findtail, uint64_t *la, uint64_t *llen,
                           uint64_t *pa, uint64_t *plen, unsigned int *alg, unsigned int *flags) except -1:
        cdef unsigned int bits = self.lclusterbits
        cdef uint64_t initial_lcn = ofs >> bits
        cdef uint64_t endoff = ofs & ((1 << bits) - 1)
        cdef uint64_t end
        cdef bint fragment = (self.advise & d.ADVISE_FRAGMENT_PCLUSTER) != 0
        cdef bint ztail = self.inline_size != 0
        self.m_compressedblks = 0
        self.m_partialref = False
        self.m_delta0 = 0
        self.load(initial_lcn, False)
        if findtail and ztail:
            self.inline_pos = self.m_nextpackoff
        flags[0] = MAPPED
        end = (self.m_lcn + 1) << bits
        if self.m_type == d.LCLUSTER_TYPE_NONHEAD:
            la[0] = self.lookback(self.m_delta0)
        elif endoff >= self.m_clusterofs:
            self.m_headtype = self.m_type
            la[0] = (self.m_lcn << bits) | self.m_clusterofs
            if ztail and end > self.size:
                end = self.size
        else:
            if not self.m_lcn:
                self.corrupt("logical cluster 0 starts after its own offset", 0)
            end = (self.m_lcn << bits) | self.m_clusterofs
            flags[0] |= FULL_MAPPED
            la[0] = self.lookback(1)
        if self.m_partialref:
            flags[0] |= PARTIAL_REF
        llen[0] = end - la[0]
        if findtail:
            self.tail_headlcn = self.m_lcn
            if fragment and not self.compact:
                self.fragmentoff |= self.m_pblk << 32
        if ztail and self.m_lcn == self.tail_headlcn:
            flags[0] |= INLINE
            pa[0] = self.inline_pos
            plen[0] = self.inline_size
            if (pa[0] & ((1 << self.blkszbits) - 1)) + plen[0] > (1u << self.blkszbits):
                self.corrupt(f"inline pcluster of {plen[0]} bytes crosses a block", self.m_lcn)
        elif fragment and self.m_lcn == self.tail_headlcn:
            flags[0] = FRAGMENT
        else:
            pa[0] = self.m_pblk << self.blkszbits
            self.compressed_length(plen)
        if self.m_headtype == d.LCLUSTER_TYPE_PLAIN:
            alg[0] = d.COMPRESSION_INTERLACED if self.advise & d.ADVISE_INTERLACED_PCLUSTER else d.COMPRESSION_SHIFTED
        elif self.m_headtype == d.LCLUSTER_TYPE_HEAD2:
            alg[0] = self.alg_head2
        else:
            alg[0] = self.alg_head1
        return 0

    cdef int map_extent_records(self, uint64_t ofs, uint64_t *la, uint64_t *llen,
                                uint64_t *pa, uint64_t *plen, unsigned int *alg, unsigned int *flags) except -1:
        cdef unsigned int recsz = 4 << ((self.advise >> d.ADVISE_EXTRECSZ_BIT) & d.ADVISE_EXTRECSZ_MASK)
        cdef uint64_t lsize = <uint64_t>1 << self.lclusterbits
        cdef uint64_t pos = (map_header_pos(self.data_start) + d.MAP_HEADER_SIZE + recsz - 1) // recsz * recsz
        cdef uint64_t lend = self.size, lstart, base = d.NULL_ADDR, rec_la, rec_pa, rec_plen = 0, rec_pos = 0
        cdef uint64_t l, r, mid, bmask = (1 << self.blkszbits) - 1
        cdef const uint8_t *ext
        cdef bint last
        cdef unsigned int fmt
        flags[0] = 0
        pa[0] = 0
        plen[0] = 0
        if recsz <= d.EXTENT_lstart_lo:  # no logical starts: one record per lcluster
            if recsz <= d.EXTENT_pstart_lo:  # lengths alone: pclusters lie end to end from a 64-bit start
                ext = self.at(pos, 8)
                base = le64(ext)
                pos += 8
                lstart = 0
            else:
                lstart = ofs & ~(lsize - 1)
                pos += (lstart >> self.lclusterbits) * recsz
            while lstart <= ofs:
                ext = self.at(pos, recsz)
                rec_plen = le32(ext + d.EXTENT_plen)
                if base != d.NULL_ADDR:
                    rec_pa = base
                    base += rec_plen & d.EXTENT_PLEN_MASK
                else:
                    rec_pa = le32(ext + d.EXTENT_pstart_lo)
                pos += recsz
                lstart += lsize
            last = lstart >= (lend + lsize - 1) // lsize * lsize
            if lstart < lend:
                lend = lstart
            lstart -= lsize
        else:
            lstart = lend
            l = 0
            r = self.extent_count
            while l < r:
                mid = l + (r - l) // 2
                ext = self.at(pos + mid * recsz, recsz)
                rec_la = le32(ext + d.EXTENT_lstart_lo)
                if recsz > d.EXTENT_lstart_hi:
                    rec_la |= <uint64_t>le32(ext + d.EXTENT_lstart_hi) << 32
                if rec_la > ofs:
                    r = mid
                    if rec_la > lend:
                        raise CorruptImage("extent records out of order", self.nid, f"record {mid}")
                    lend = rec_la
                else:
                    l = mid + 1
                    if ofs == rec_la and l + 1 < r:
                        r = l + 1
                    lstart = rec_la
                    rec_plen = le32(ext + d.EXTENT_plen)
                    rec_pa = le32(ext + d.EXTENT_pstart_lo) | (<uint64_t>le32(ext + d.EXTENT_pstart_hi) << 32)
            last = l >= self.extent_count
        if lstart < lend:
            la[0] = lstart
            if last and (self.advise & d.ADVISE_FRAGMENT_PCLUSTER):
                flags[0] = FRAGMENT
                self.fragmentoff = rec_plen
                if recsz > d.EXTENT_pstart_lo:
                    self.fragmentoff |= rec_pa << 32
            elif rec_plen & d.EXTENT_PLEN_MASK:
                flags[0] = MAPPED | FULL_MAPPED
                fmt = rec_plen >> d.EXTENT_PLEN_FMT_BIT
                if rec_plen & d.EXTENT_PLEN_PARTIAL:
                    flags[0] |= PARTIAL_REF
                plen[0] = rec_plen & d.EXTENT_PLEN_MASK
                pa[0] = rec_pa
                if fmt:
                    alg[0] = fmt - 1
                elif (self.advise & d.ADVISE_INTERLACED_PCLUSTER) and not ((pa[0] | plen[0]) & bmask):
                    alg[0] = d.COMPRESSION_INTERLACED
                else:
                    alg[0] = d.COMPRESSION_SHIFTED
        else:
            la[0] = ofs
        llen[0] = lend - la[0]
        return 0

    def map(self, uint64_t offset, bint whole=True):
        """The extent holding ``offset``: ``(la, llen, pa, plen, algorithm, flags)``.

        With ``whole`` the extent's length is its full decoded length, so that a
        pcluster is always decompressed completely and can be cached.
        """
        try:
            return self.lookup_extent(offset, whole)
        finally:
            self.give_back()

    def map_range(self, uint64_t offset, uint64_t end):
        """The extents (as ``map`` gives them) that together cover ``[offset, end)``, in order."""
        cdef list extents = []
        cdef uint64_t pos = offset, stop
        try:
            while pos < end:
                ext = self.lookup_extent(pos, True)
                stop = min(end, <uint64_t>ext[0] + <uint64_t>ext[1])
                if stop <= pos:
                    raise CorruptImage("compressed extent maps no bytes", self.nid, f"offset {pos}")
                extents.append(ext)
                pos = stop
            return extents
        finally:
            self.give_back()

    cdef inline void give_back(self) noexcept:
        """Drop the borrowed metadata chunk, so that a cached map pins none between lookups."""
        self.block = None
        self.block_no = -1

    cdef object lookup_extent(self, uint64_t offset, bint whole):
        cdef uint64_t la = offset, llen = 0, pa = 0, plen = 0
        cdef unsigned int alg = 0, flags = 0
        if offset >= self.size:
            return (self.size, 0, 0, 0, 0, 0)
        if not self.initialized:
            self.init()
        if self.extents_format:
            self.map_extent_records(offset, &la, &llen, &pa, &plen, &alg, &flags)
        elif self.all_fragment or ((self.advise & d.ADVISE_FRAGMENT_PCLUSTER) and not self.tail_headlcn):
            return (0, self.size, 0, 0, 0, FRAGMENT)
        else:
            self.map_lclusters(offset, False, &la, &llen, &pa, &plen, &alg, &flags)
            if whole and (flags & MAPPED) and not (flags & FULL_MAPPED):
                llen = self.decoded_length(la)
                flags |= FULL_MAPPED
        if flags & MAPPED:
            if alg >= d.COMPRESSION_MAX and alg not in (d.COMPRESSION_SHIFTED, d.COMPRESSION_INTERLACED):
                raise UnsupportedFeature(f"unknown compression algorithm {alg} (nid {self.nid}, offset {la})")
            if alg < d.COMPRESSION_MAX and not (self.algorithms & (1 << alg)):
                raise CorruptImage(f"algorithm {alg} is not enabled in the superblock", self.nid, f"offset {la}")
            if plen > d.PCLUSTER_MAX_SIZE or llen > d.PCLUSTER_MAX_DSIZE:
                raise CorruptImage(f"pcluster of {plen} bytes decoding to {llen} bytes exceeds the format limits",
                                   self.nid, f"offset {la}")
            if alg >= d.COMPRESSION_MAX and llen > plen:
                raise CorruptImage(f"uncompressed pcluster of {plen} bytes cannot hold {llen} bytes",
                                   self.nid, f"offset {la}")
        if offset < la or (llen and offset >= la + llen and not (flags & FRAGMENT)):
            raise CorruptImage("extent does not cover the offset it was looked up for", self.nid, f"offset {offset}")
        return (la, llen, pa, plen, alg, flags)
