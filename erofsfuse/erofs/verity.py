"""dm-verity hash trees as ``veritysetup format`` writes them, and reads checked against one.

The data file is cut into data blocks. Level 0 of the tree holds the digest
of every data block, each level above the digests of the hash blocks below
it, up to a single hash block whose digest is the root hash (a one-block
file has no levels: its block's digest is the root). Levels are stored top
first from the start of the tree. A veritysetup superblock, when there is
one, sits at the hash offset and records the parameters; the tree then
starts at the next hash block boundary. Hash type 1 puts the salt before
the hashed bytes and pads each digest to a power of two; type 0 (Chrome OS)
puts the salt after them and packs digests tight.

The superblock is not authenticated, and need not be: every parameter in it
goes into the digests or the layout, so a changed one makes the root hash or
a lower level fail to match, never lets different bytes through.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import uuid as uuidmod
from collections.abc import Callable
from dataclasses import dataclass, replace

from .cache import SizedLRU
from .devices import BackingFile
from .errors import CorruptImage, DeviceError, IntegrityError, UnsupportedFeature

SUPERBLOCK = struct.Struct("<8sII16s32sIIQH6x256s168x")
SUPERBLOCK_SIZE = SUPERBLOCK.size  # 512
SIGNATURE = b"verity\0\0"
VERSION = 1
MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 512, 512 << 10
MAX_SALT_SIZE = 256
DEFAULT_SALT_SIZE = 32
HASH_OFFSET_ALIGN = 512
MAX_LEVELS = 63
RUN_BYTES = 1 << 20  # data hashed per read when writing or checking a whole file

# veritysetup's names of the algorithms this module computes, with hashlib's
HASH_ALGORITHMS = {
    "sha1": "sha1", "sha224": "sha224", "sha256": "sha256", "sha384": "sha384", "sha512": "sha512",
    "sha3-224": "sha3_224", "sha3-256": "sha3_256", "sha3-384": "sha3_384", "sha3-512": "sha3_512",
}


class BlockHasher:
    """Digests of single blocks, salted before or after the block's bytes."""

    def __init__(self, hashlib_name: str, salt: bytes, salt_first: bool):
        self._new = getattr(hashlib, hashlib_name)
        self.digest_size: int = self._new().digest_size
        self._salt = salt
        self._salted = self._new(salt) if salt_first else None

    def digest(self, block: bytes | memoryview) -> bytes:
        if self._salted is not None:
            h = self._salted.copy()
            h.update(block)
        else:
            h = self._new(block)
            h.update(self._salt)
        return h.digest()

    def digests(self, run: bytes | memoryview, block_size: int) -> list[bytes]:
        """The digest of every ``block_size`` block of ``run`` (hashlib lets go of the GIL for each)."""
        view = memoryview(run)
        if self._salted is None:
            return [self.digest(view[i:i + block_size]) for i in range(0, len(view), block_size)]
        out = []
        salted = self._salted
        for i in range(0, len(view), block_size):  # digest() inlined: this loop is the verified read path
            h = salted.copy()
            h.update(view[i:i + block_size])
            out.append(h.digest())
        return out


def tree_levels(blocks: int, fanout_bits: int) -> int:
    """How many hash levels reduce ``blocks`` digests to one hash block (0 for a single block)."""
    levels = 0
    while fanout_bits * levels < 64 and (blocks - 1) >> (fanout_bits * levels):
        levels += 1
    return levels


def level_blocks(blocks: int, fanout_bits: int, level: int) -> int:
    """Hash blocks at ``level`` (0: the digests of the ``blocks`` data blocks)."""
    return ((blocks - 1) >> (fanout_bits * (level + 1))) + 1


class TreeBuilder:
    """Builds a hash tree bottom-up in one pass over the data.

    Each level keeps its unfinished hash block; a finished block goes to
    ``store(level, block)`` and its digest to the level above, so memory is
    one block per level whatever the size of the data.
    """

    def __init__(self, hasher: BlockHasher, hash_block_size: int, entry_size: int, fanout_bits: int,
                 levels: int, store: Callable[[int, bytes], None] | None = None):
        self.hasher = hasher
        self.hash_block_size = hash_block_size
        self.fanout = 1 << fanout_bits
        self.levels = levels
        self._pad = bytes(entry_size - hasher.digest_size)
        self._store = store
        self._pending: list[list[bytes]] = [[] for _ in range(levels)]
        self._root: bytes | None = None

    def pack(self, digests: list[bytes]) -> bytes:
        """Digests as they lie in a hash block: each padded to the entry size."""
        return self._pad.join(digests) + self._pad if self._pad else b"".join(digests)

    def _block(self, digests: list[bytes]) -> bytes:
        """A hash block: the packed digests, zero-padded to the block size."""
        return self.pack(digests).ljust(self.hash_block_size, b"\0")

    def add(self, digests: list[bytes], level: int = 0) -> None:
        """Digests of the next blocks of ``level - 1`` (of data blocks for level 0)."""
        if level == self.levels:
            if self._root is not None or len(digests) != 1:
                raise ValueError("the top of the tree has more than one block")
            self._root = digests[0]
            return
        pending = self._pending[level]
        pending.extend(digests)
        full = len(pending) - len(pending) % self.fanout
        if full:
            blocks = [self._block(pending[i:i + self.fanout]) for i in range(0, full, self.fanout)]
            del pending[:full]
            self._finished(level, blocks)

    def finish(self) -> bytes:
        """Close the unfinished blocks (zero-padded) and return the root digest."""
        for level in range(self.levels):
            if self._pending[level]:
                block = self._block(self._pending[level])
                self._pending[level] = []
                self._finished(level, [block])
        if self._root is None:
            raise ValueError("no data was added")
        return self._root

    def _finished(self, level: int, blocks: list[bytes]) -> None:
        if self._store is not None:
            for block in blocks:
                self._store(level, block)
        self.add([self.hasher.digest(block) for block in blocks], level + 1)


@dataclass(frozen=True)
class VerityParams:
    """How a tree is made: the fields of veritysetup's superblock.

    ``data_blocks`` 0 stands for the whole data area (the data file, or the
    part of it before the hash offset when the tree is appended to it).
    """

    data_blocks: int = 0
    hash_name: str = "sha256"
    data_block_size: int = 4096
    hash_block_size: int = 4096
    salt: bytes = b""
    hash_type: int = 1
    uuid: bytes = bytes(16)

    def __post_init__(self) -> None:
        if self.hash_name not in HASH_ALGORITHMS:
            raise UnsupportedFeature(f"hash algorithm {self.hash_name!r} is not supported "
                                     f"(one of {', '.join(HASH_ALGORITHMS)})")
        if self.hash_type not in (0, 1):
            raise UnsupportedFeature(f"verity hash type {self.hash_type} is not supported (0 or 1)")
        for what, size in (("data", self.data_block_size), ("hash", self.hash_block_size)):
            if not (MIN_BLOCK_SIZE <= size <= MAX_BLOCK_SIZE and size & (size - 1) == 0):
                raise UnsupportedFeature(f"{what} block size {size} is not supported "
                                         f"(a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE})")
        if len(self.salt) > MAX_SALT_SIZE:
            raise UnsupportedFeature(f"a salt of {len(self.salt)} bytes is too long (at most {MAX_SALT_SIZE})")
        if not 0 <= self.data_blocks < 1 << 64:
            raise UnsupportedFeature(f"a data block count of {self.data_blocks} is out of range")
        if len(self.uuid) != 16:
            raise UnsupportedFeature("a UUID has 16 bytes")

    def hasher(self) -> BlockHasher:
        return BlockHasher(HASH_ALGORITHMS[self.hash_name], self.salt, salt_first=self.hash_type == 1)

    @property
    def uuid_text(self) -> str:
        return str(uuidmod.UUID(bytes=self.uuid))

    def pack_superblock(self) -> bytes:
        return SUPERBLOCK.pack(SIGNATURE, VERSION, self.hash_type, self.uuid, self.hash_name.encode(),
                               self.data_block_size, self.hash_block_size, self.data_blocks,
                               len(self.salt), self.salt)

    @classmethod
    def unpack_superblock(cls, raw: bytes, path: str, offset: int) -> VerityParams:
        """The parameters recorded in the superblock read at ``offset`` of ``path``."""
        where = f"byte {offset} of {path}"
        if len(raw) < SUPERBLOCK_SIZE or raw[:len(SIGNATURE)] != SIGNATURE:
            raise IntegrityError(f"no verity superblock at {where} (a tree made with --no-superblock needs "
                                 "its parameters given)", path)
        _, version, hash_type, uuid, name, data_bs, hash_bs, data_blocks, salt_size, salt = SUPERBLOCK.unpack(
            raw[:SUPERBLOCK_SIZE])
        if version != VERSION:
            raise UnsupportedFeature(f"verity superblock version {version} at {where} is not supported")
        if salt_size > MAX_SALT_SIZE:
            raise IntegrityError(f"the verity superblock at {where} claims a {salt_size}-byte salt", path)
        hash_name = name.split(b"\0", 1)[0].decode("ascii", "replace")
        return cls(data_blocks, hash_name, data_bs, hash_bs, salt[:salt_size], hash_type, uuid)


class TreeLayout:
    """Where a tree's levels lie in the hash file, in hash blocks; level 0 holds the data blocks' digests."""

    def __init__(self, params: VerityParams, hash_offset: int, superblock: bool):
        if params.data_blocks < 1:
            raise ValueError("the layout of a tree needs its data block count")
        self.params = params
        self.digest_size = params.hasher().digest_size
        self.entry_size = self.digest_size if params.hash_type == 0 else 1 << (self.digest_size - 1).bit_length()
        self.fanout_bits = (params.hash_block_size // self.digest_size).bit_length() - 1
        self.levels = tree_levels(params.data_blocks, self.fanout_bits)
        if self.levels > MAX_LEVELS:
            raise UnsupportedFeature(f"a hash tree of {self.levels} levels is not supported")
        hbs = params.hash_block_size
        self.start = -(-(hash_offset + SUPERBLOCK_SIZE) // hbs) if superblock else hash_offset // hbs
        self.level_start = [0] * self.levels
        self.level_blocks = [level_blocks(params.data_blocks, self.fanout_bits, i) for i in range(self.levels)]
        position = self.start
        for level in reversed(range(self.levels)):
            self.level_start[level] = position
            position += self.level_blocks[level]
        self.end = position

    @property
    def hash_blocks(self) -> int:
        return self.end - self.start

    def builder(self, store: Callable[[int, bytes], None] | None = None) -> TreeBuilder:
        return TreeBuilder(self.params.hasher(), self.params.hash_block_size, self.entry_size, self.fanout_bits,
                           self.levels, store)


@dataclass(frozen=True)
class Tree:
    """A written tree: what ``veritysetup format`` reports about it."""

    params: VerityParams
    layout: TreeLayout
    root_hash: bytes
    hash_offset: int
    superblock: bool
    appended: bool
    uncovered_bytes: int  # the end of the data file that is past the last whole data block

    @property
    def hash_device_size(self) -> int:
        """Where the tree ends in the hash file."""
        return self.layout.end * self.params.hash_block_size


def check_hash_offset(hash_offset: int) -> None:
    if hash_offset < 0 or hash_offset % HASH_OFFSET_ALIGN:
        raise UnsupportedFeature(f"hash offset {hash_offset} is not a multiple of {HASH_OFFSET_ALIGN}")


def _same_file(a: int, b: int) -> bool:
    return os.path.samestat(os.fstat(a), os.fstat(b))


def _data_area(data: BackingFile, appended: bool, hash_offset: int) -> int:
    """The bytes a tree may cover: the data file, or its part before an appended tree."""
    return min(data.size, hash_offset) if appended else data.size


def _sized(params: VerityParams, area: int, path: str) -> VerityParams:
    """``params`` with the data block count filled in from the data area when it is 0."""
    if params.data_blocks:
        return params
    blocks = area // params.data_block_size
    if not blocks:
        raise DeviceError(f"{path} is smaller than one {params.data_block_size}-byte data block")
    return replace(params, data_blocks=blocks)


def format_tree(data_path: str, hash_path: str | None, params: VerityParams, *, hash_offset: int | None = None,
                superblock: bool = True, progress: Callable[[int], None] | None = None) -> Tree:
    """Write the tree of ``data_path`` into ``hash_path`` at ``hash_offset``, as veritysetup does.

    ``hash_path`` None (or the data file itself) appends the tree to the data
    file; then the data are the bytes the file holds now and must end at or
    before ``hash_offset`` (by default, the next hash block boundary; 0 for a
    separate hash file). ``progress`` is told how many data blocks were
    hashed. The hash file is created if needed and never truncated.
    """
    data = BackingFile(data_path)
    hash_fd = -1
    try:
        target = hash_path or data_path
        try:
            hash_fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DeviceError(f"cannot open {target} for writing: {exc.strerror}") from None
        appended = _same_file(data.fd, hash_fd)
        if hash_offset is None:
            hash_offset = -(-data.size // params.hash_block_size) * params.hash_block_size if appended else 0
        check_hash_offset(hash_offset)
        params = _sized(params, data.size, data_path)
        covered = params.data_blocks * params.data_block_size
        if covered > data.size:
            raise DeviceError(f"{data_path} holds {data.size} bytes, less than {params.data_blocks} data blocks")
        if appended and covered > hash_offset:
            raise DeviceError(f"the data of {data_path} ({covered} bytes) reach past the hash offset {hash_offset}")
        layout = TreeLayout(params, hash_offset, superblock)
        root = _write_levels(data, hash_fd, layout, progress)
        if superblock:
            _pwrite(hash_fd, params.pack_superblock(), hash_offset)
        end = layout.end * params.hash_block_size
        info = os.fstat(hash_fd)
        if stat.S_ISREG(info.st_mode) and info.st_size < end:  # a tree with no level still ends on a block
            os.ftruncate(hash_fd, end)
        os.fsync(hash_fd)
        return Tree(params, layout, root, hash_offset, superblock, appended, data.size - covered)
    finally:
        data.close()
        if hash_fd >= 0:
            os.close(hash_fd)


def _pwrite(fd: int, data: bytes | bytearray, pos: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, pos)
        view, pos = view[written:], pos + written


def _write_levels(data: BackingFile, hash_fd: int, layout: TreeLayout,
                  progress: Callable[[int], None] | None) -> bytes:
    """Hash the data a run at a time, writing each level's blocks in order where the layout puts them."""
    hbs, dbs = layout.params.hash_block_size, layout.params.data_block_size
    pending = [bytearray() for _ in range(layout.levels)]
    written = [0] * layout.levels

    def flush(level: int) -> None:
        _pwrite(hash_fd, pending[level], (layout.level_start[level] + written[level]) * hbs)
        written[level] += len(pending[level]) // hbs
        pending[level].clear()

    def store(level: int, block: bytes) -> None:
        pending[level] += block
        if len(pending[level]) >= RUN_BYTES:
            flush(level)

    builder = layout.builder(store)
    total = layout.params.data_blocks
    step = max(1, RUN_BYTES // dbs)
    for first in range(0, total, step):
        count = min(step, total - first)
        run = os.pread(data.fd, count * dbs, first * dbs)
        if len(run) != count * dbs:
            raise DeviceError(f"short read of {data.path} at {first * dbs}")
        builder.add(builder.hasher.digests(run, dbs))
        if progress is not None:
            progress(count)
    root = builder.finish()
    for level in range(layout.levels):
        flush(level)
    return root


class VerifiedFile:
    """A data file read through its dm-verity tree; it stands in for a ``BackingFile``.

    Reads are served from whole data blocks, each checked up to the root the
    first time it is read and remembered as good in a map of one byte per
    data block (1/4096 of an image of 4 KiB blocks), so a re-read costs one
    lookup (dm-verity's ``check_at_most_once``). Checked hash blocks are kept
    in a bounded cache, the top one for good. A block that fails is never
    served: the read raises ``IntegrityError`` naming the file and the block.
    Opening fails the same way when the root hash does not match the tree.

    ``params`` None reads them from the superblock at ``hash_offset`` of
    ``hash_path`` (the data file itself when None: an appended tree);
    given, the tree has no superblock. ``base`` is where the bytes this file
    serves start inside the data (an image at an offset).
    """

    __slots__ = ("path", "hash_path", "hash_offset", "root_hash", "params", "layout", "base", "size",
                 "_data", "_hash", "_hasher", "_pack", "_verified", "_cache", "_top")

    def __init__(self, path: str, root_hash: bytes, *, hash_path: str | None = None, hash_offset: int = 0,
                 params: VerityParams | None = None, base: int = 0, hash_cache_bytes: int = 4 << 20):
        check_hash_offset(hash_offset)
        self.path = path
        self.hash_path = hash_path or path
        self.hash_offset = hash_offset
        self.root_hash = root_hash
        self._data = BackingFile(path)
        self._hash: BackingFile | None = None
        try:
            self._hash = self._data if hash_path is None else BackingFile(hash_path)
            appended = self._hash is self._data or _same_file(self._data.fd, self._hash.fd)
            superblock = params is None
            if params is None:
                raw = os.pread(self._hash.fd, SUPERBLOCK_SIZE, hash_offset)
                params = VerityParams.unpack_superblock(raw, self.hash_path, hash_offset)
            self.params = params = _sized(params, _data_area(self._data, appended, hash_offset), path)
            covered = params.data_blocks * params.data_block_size
            if covered > self._data.size or (appended and covered > hash_offset):
                area = _data_area(self._data, appended, hash_offset)
                raise DeviceError(f"{path} has {area} bytes of data, its hash tree covers {covered}")
            if not 0 <= base <= covered:
                raise DeviceError(f"offset {base} is outside the {covered} bytes of {path} its hash tree covers")
            self.layout = TreeLayout(params, hash_offset, superblock)
            needed = self.layout.end * params.hash_block_size
            if needed > self._hash.size:
                raise DeviceError(f"{self.hash_path} holds {self._hash.size} bytes, its hash tree needs {needed}")
            self.base = base
            self.size = covered - base
            self._hasher = params.hasher()
            self._pack = self.layout.builder().pack
            self._verified = bytearray(params.data_blocks)
            self._cache: SizedLRU[bytes] = SizedLRU(hash_cache_bytes)
            self._top = self._check_root()
        except BaseException:
            self.close()
            raise

    # -- the BackingFile interface ------------------------------------------------
    def pread(self, pos: int, length: int) -> bytes:
        """Exactly ``length`` verified bytes at ``pos``; a read past the covered data is corruption."""
        if pos < 0 or length < 0 or pos + length > self.size:
            raise CorruptImage(f"read of {length} bytes at {pos} is past the end of {self.path} "
                               f"({self.size} bytes under its hash tree)")
        if not length:
            return b""
        bits = self.params.data_block_size.bit_length() - 1
        start = self.base + pos
        first = start >> bits
        run = self._read_blocks(first, ((start + length - 1) >> bits) + 1 - first)
        skip = start - (first << bits)
        return run if skip == 0 and len(run) == length else run[skip:skip + length]

    def prefetch(self, pos: int, length: int) -> None:
        """Start reading ahead the data and the level-0 hash blocks that check them (a hint)."""
        if not 0 <= pos < self.size:
            return
        length = min(length, self.size - pos)
        self._data.prefetch(self.base + pos, length)
        if self.layout.levels:
            dbs, hbs, bits = self.params.data_block_size, self.params.hash_block_size, self.layout.fanout_bits
            first_leaf = (self.base + pos) // dbs >> bits
            last_leaf = (self.base + pos + length - 1) // dbs >> bits
            self._hash.prefetch((self.layout.level_start[0] + first_leaf) * hbs, (last_leaf - first_leaf + 1) * hbs)

    def close(self) -> None:
        if self._hash is not None and self._hash is not self._data:
            self._hash.close()
        self._data.close()

    def __enter__(self) -> VerifiedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- whole files ----------------------------------------------------------------
    def check_all(self, progress: Callable[[int], None] | None = None) -> None:
        """Verify every data block (and so every hash block), in order; the first bad one raises."""
        total = self.params.data_blocks
        step = max(1, RUN_BYTES // self.params.data_block_size)
        for first in range(0, total, step):
            count = min(step, total - first)
            self._read_blocks(first, count)
            if progress is not None:
                progress(count)

    @property
    def verified_blocks(self) -> int:
        """Data blocks checked so far."""
        return self._verified.count(1)

    # -- verification ---------------------------------------------------------------
    def _read_blocks(self, first: int, count: int) -> bytes:
        dbs = self.params.data_block_size
        run = os.pread(self._data.fd, count * dbs, first * dbs)
        if len(run) != count * dbs:
            block = first + len(run) // dbs
            raise IntegrityError(f"data block {block} of {self.path} cannot be read: the file is shorter than "
                                 "its hash tree says", self.path, block, block * dbs)
        end = first + count
        verified = self._verified
        start = verified.find(0, first, end)
        while start != -1:
            stop = verified.find(1, start, end)
            stop = end if stop == -1 else stop
            self._check_span(memoryview(run)[(start - first) * dbs:(stop - first) * dbs], start, stop)
            start = verified.find(0, stop, end) if stop < end else -1
        return run

    def _check_span(self, data: memoryview, first: int, end: int) -> None:
        """Check data blocks ``first`` to ``end`` (their bytes in ``data``) one level-0 hash block at a time."""
        dbs, bits, entry = self.params.data_block_size, self.layout.fanout_bits, self.layout.entry_size
        block = first
        while block < end:
            leaf = block >> bits
            stop = min(end, (leaf + 1) << bits)
            digests = self._hasher.digests(data[(block - first) * dbs:(stop - first) * dbs], dbs)
            slot = (block - (leaf << bits)) * entry
            expected = self._hash_block(0, leaf, block)
            if self._pack(digests) != expected[slot:slot + (stop - block) * entry]:
                bad = block + next(i for i, digest in enumerate(digests)
                                   if digest != expected[slot + i * entry:slot + i * entry + len(digest)])
                raise IntegrityError(f"data block {bad} of {self.path} does not match its hash tree",
                                     self.path, bad, bad * dbs)
            self._verified[block:stop] = b"\x01" * (stop - block)
            block = stop

    def _hash_block(self, level: int, index: int, data_block: int) -> bytes:
        """Hash block ``index`` of ``level``, checked against its parent (``data_block`` is being read)."""
        if level == self.layout.levels - 1:
            return self._top
        number = self.layout.level_start[level] + index
        block = self._cache.get(number)
        if block is not None:
            return block
        parent = self._hash_block(level + 1, index >> self.layout.fanout_bits, data_block)
        block = self._read_hash_block(number, data_block)
        slot = (index & ((1 << self.layout.fanout_bits) - 1)) * self.layout.entry_size
        if self._hasher.digest(block) != parent[slot:slot + self._hasher.digest_size]:
            dbs = self.params.data_block_size
            raise IntegrityError(f"hash block {number} (level {level}) of {self.hash_path} does not match the "
                                 f"tree above it (reading data block {data_block} of {self.path})",
                                 self.path, data_block, data_block * dbs)
        return self._cache.put(number, block)

    def _read_hash_block(self, number: int, data_block: int | None) -> bytes:
        hbs = self.params.hash_block_size
        block = os.pread(self._hash.fd, hbs, number * hbs)
        if len(block) != hbs:
            offset = None if data_block is None else data_block * self.params.data_block_size
            raise IntegrityError(f"hash block {number} of {self.hash_path} cannot be read: the file is cut short",
                                 self.path, data_block, offset)
        return block

    def _check_root(self) -> bytes:
        """Check the top of the tree (the only data block, for a one-block file) against the root hash."""
        digest_size = self._hasher.digest_size
        if len(self.root_hash) != digest_size:
            raise IntegrityError(f"a {self.params.hash_name} root hash has {digest_size} bytes, not "
                                 f"{len(self.root_hash)}", self.path)
        if self.layout.levels:
            top = self._read_hash_block(self.layout.start, None)
        else:
            top = os.pread(self._data.fd, self.params.data_block_size, 0)
        if self._hasher.digest(top) != self.root_hash:
            raise IntegrityError(f"the root hash does not match the hash tree of {self.path} in {self.hash_path} "
                                 "(a wrong root hash, or a damaged tree or superblock)", self.path)
        if not self.layout.levels:
            self._verified[0] = 1
        return top


APPENDED_TREE_ALIGN = 4096  # where an appended tree starts by default: the data's end rounded up to this
MAX_ROOT_HASH_SIZE = 64  # sha512's


def parse_root_hash(text: str) -> bytes:
    """A root hash as veritysetup prints it (hex digits); ``ValueError`` with a one-line reason otherwise."""
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        digest = b""
    if not digest or len(text) != 2 * len(digest) or len(digest) > MAX_ROOT_HASH_SIZE:
        raise ValueError(f"{text!r} is not a root hash (the hex digits veritysetup format prints)")
    return digest


@dataclass(frozen=True)
class VeritySpec:
    """How to serve one file verified: the root hash it must match and where its tree lies.

    ``hash_path`` None means the tree is appended to the file itself;
    ``hash_offset`` None means where ``erofstool verity format`` puts it by
    default: at 0 of a hash file of its own, and after the data (their end
    rounded up to 4 KiB) when appended.
    """

    root_hash: bytes
    hash_path: str | None = None
    hash_offset: int | None = None

    def open(self, path: str, base: int, data_end: Callable[[], int]) -> VerifiedFile:
        """``path`` read through its tree from ``base``; ``data_end`` tells where an appended tree's data end."""
        offset = self.hash_offset
        if offset is None:
            offset = 0 if self.hash_path is not None else -(-data_end() // APPENDED_TREE_ALIGN) * APPENDED_TREE_ALIGN
        return VerifiedFile(path, self.root_hash, hash_path=self.hash_path, hash_offset=offset, base=base)
