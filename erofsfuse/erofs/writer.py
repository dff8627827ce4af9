"""Writing EROFS images: the metadata built here, file data stored in the image or referenced on extra devices.

The reader's other direction: a tree described in memory (``InodeSpec``) becomes an image that the kernel
mounts. A regular file either carries its bytes, which are stored in the image, or refers to chunks of
extra devices (``Chunks``), so an image can present files whose data lies elsewhere (in other images)
without copying it: a metadata-only image.

Layout: the superblock and the device table, then every inode (each directory's children next to each
other, in name order) with its inline xattrs and then either the tail of its data (when it fits in the
inode's block) or its chunk indexes, then the xattrs that several inodes share, then the blocks of data
too large to sit inline. An inode is compact when its owners, link count and size fit and its time is
the image's build time (kernels before 6.15 give every compact inode the build time), extended otherwise.

The output depends on the input alone: the build time is the most common modification time (which keeps
most inodes compact), and the UUID, unless one is given, is derived from the image's contents.
"""

from __future__ import annotations

import collections
import hashlib
import stat
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

from . import ondisk as d
from .errors import ErofsError
from .superblock import kernel_crc32c
from .xattr import split_name

NSEC = 1_000_000_000
BASE_SUPERBLOCK_SIZE = 128  # the superblock without extension slots (sb_extslots = 0)
U16_MAX = 0xFFFF
U32_MAX = 0xFFFFFFFF
NO_BLOCKS = U32_MAX  # i_u of a file whose data has no block of its own
MAX_SHARED_PER_INODE = 0xFF  # h_shared_count is one byte
MAX_CHUNK_BITS_ABOVE_BLOCK = d.CHUNK_FORMAT_BLKBITS_MASK


class UnwritableTree(ErofsError):
    """The tree cannot be stored as EROFS: a name, xattr, size, count or address beyond what the format holds."""


class ChunkRef(NamedTuple):
    """Where one chunk of a file's data is: a block address on an extra device (numbered from 1)."""

    device: int
    block: int


@dataclass(frozen=True)
class Chunks:
    """A regular file's data on extra devices: ``size`` bytes in chunks of ``1 << chunk_bits`` bytes.

    ``refs`` has one entry per chunk; ``None`` is a hole (reads as zeros). The last chunk may be short.
    """

    size: int
    chunk_bits: int
    refs: Sequence[ChunkRef | None]


@dataclass(frozen=True)
class Device:
    """An extra device in the device table: its size in blocks and an optional tag (such as a blob digest)."""

    blocks: int
    tag: bytes = b""


@dataclass(eq=False)
class InodeSpec:
    """One inode of the tree to write.

    ``mode`` includes the file type. A directory lists its ``children`` by name; a symlink's ``data`` is its
    target, a regular file's is its content (bytes stored in the image, or ``Chunks`` on extra devices).
    The same ``InodeSpec`` under several names is one inode (hard links; not for directories). ``nlink``
    left as None is counted: names of a file, 2 plus the subdirectories of a directory.
    """

    mode: int
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    nlink: int | None = None
    xattrs: Sequence[tuple[bytes, bytes]] = ()
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device
    data: bytes | Chunks = b""
    children: dict[bytes, InodeSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class WrittenImage:
    """What was written: the image's size, its inode count and the root's nid."""

    size: int
    inodes: int
    root_nid: int


def encode_dev(major: int, minor: int) -> int:
    """The kernel's ``new_encode_dev``: (major, minor) as the 32-bit number a device inode stores."""
    if major >= 1 << 12 or minor >= 1 << 20 or major < 0 or minor < 0:
        raise UnwritableTree(f"device number {major}:{minor} does not fit in 32 bits")
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


class _Laid:
    """An inode as it is laid out: its place, form and the parts stored after it."""

    __slots__ = (
        "spec", "ino", "nlink", "pos", "extended", "layout", "xattr_entries", "inline_xattrs", "shared_keys",
        "xattr_size", "payload", "inline_tail", "blocks", "startblk", "parent", "dirents", "meta_size",
    )

    def __init__(self, spec: InodeSpec, ino: int):
        self.spec = spec
        self.ino = ino
        self.nlink = 0
        self.pos = 0
        self.extended = False
        self.layout = d.LAYOUT_FLAT_PLAIN
        self.xattr_entries: list[bytes] = []  # encoded, each once
        self.inline_xattrs = b""
        self.shared_keys: list[bytes] = []
        self.xattr_size = 0
        self.payload = b""  # data stored in the image: a symlink's target, a file's bytes, a directory's dirents
        self.inline_tail = 0  # bytes of the payload kept right after the inode (FLAT_INLINE)
        self.blocks = 0  # blocks of the payload stored in the data area
        self.startblk = NO_BLOCKS
        self.parent = spec  # a directory's ".."
        self.dirents: list[list[tuple[bytes, InodeSpec]]] = []  # a directory's entries, block by block
        self.meta_size = 0


def _xattr_entry(name: bytes, value: bytes) -> bytes:
    """One on-disk xattr entry (header, name suffix, value, padding) for a full xattr name."""
    split = split_name(name)
    if split is None:
        raise UnwritableTree(f"xattr {name!r} has no namespace EROFS can store")
    index, suffix = split
    if len(suffix) > d.NAME_LEN:
        raise UnwritableTree(f"xattr name {name!r} is too long")
    if len(value) > U16_MAX:
        raise UnwritableTree(f"the value of xattr {name!r} is {len(value)} bytes long")
    raw = d.XATTR_ENTRY.pack(len(suffix), index, len(value)) + suffix + value
    return raw + bytes(d.xattr_entry_size(len(suffix), len(value)) - len(raw))


def _check_name(name: bytes) -> None:
    if not name or len(name) > d.NAME_LEN or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise UnwritableTree(f"{name!r} cannot be a file name")


class _Builder:
    def __init__(self, root: InodeSpec, devices: Sequence[Device], block_size: int):
        if block_size & (block_size - 1) or not 512 <= block_size <= 65536:
            raise UnwritableTree(f"block size {block_size} is not a power of two from 512 to 65536")
        if not stat.S_ISDIR(root.mode):
            raise UnwritableTree("the root is not a directory")
        if len(devices) > U16_MAX:
            raise UnwritableTree(f"{len(devices)} devices are more than the device table holds")
        self.block_size = block_size
        self.blkszbits = block_size.bit_length() - 1
        self.devices = list(devices)
        self.laid = self._collect(root)
        self.build_time_ns = self._build_time()
        self.epoch, self.fixed_nsec = divmod(self.build_time_ns, NSEC)
        self.shared = self._shared_xattrs()
        self.shared_ids: dict[bytes, int] = {}
        for item in self.laid:
            self._shape(item)
        self.total_blocks = self._place()

    # -- which inodes, in which order -----------------------------------------------
    def _collect(self, root: InodeSpec) -> list[_Laid]:
        """Every inode once, a directory's children next to each other in name order, depth first."""
        laid = [_Laid(root, 1)]
        seen = {id(root): laid[0]}
        laid[0].nlink = 2
        pending = [root]
        while pending:
            directory = pending.pop()
            parent = seen[id(directory)]
            subdirs = []
            for name in sorted(directory.children):
                _check_name(name)
                child = directory.children[name]
                is_dir = stat.S_ISDIR(child.mode)
                item = seen.get(id(child))
                if item is not None:
                    if is_dir:
                        raise UnwritableTree(f"directory {name!r} appears twice in the tree")
                    item.nlink += 1
                    continue
                item = seen[id(child)] = _Laid(child, len(laid) + 1)
                laid.append(item)
                if is_dir:
                    item.nlink = 2
                    item.parent = directory
                    parent.nlink += 1
                    subdirs.append(child)
                else:
                    item.nlink = 1
            pending.extend(reversed(subdirs))
        if len(laid) > U32_MAX:
            raise UnwritableTree(f"{len(laid)} inodes are more than the format numbers")
        for item in laid:
            if item.spec.nlink is not None:
                item.nlink = item.spec.nlink
            if not 0 < item.nlink <= U32_MAX:
                raise UnwritableTree(f"link count {item.nlink} of inode {item.ino}")
        return laid

    def _build_time(self) -> int:
        """The most common modification time (the earliest of equally common ones), in nanoseconds."""
        counts = collections.Counter(item.spec.mtime_ns for item in self.laid)
        most = max(counts.values())
        return min(t for t, n in counts.items() if n == most)

    def _shared_xattrs(self) -> dict[bytes, int]:
        """Xattr entries that more than one inode carries, stored once: entry -> its offset in the shared area."""
        encoded: dict[tuple[bytes, bytes], bytes] = {}
        counts: collections.Counter[bytes] = collections.Counter()
        for item in self.laid:
            entries = []
            for pair in item.spec.xattrs:
                entry = encoded.get(pair)
                if entry is None:
                    entry = encoded[pair] = _xattr_entry(*pair)
                if entry not in entries:
                    entries.append(entry)
            item.xattr_entries = entries
            counts.update(entries)
        shared: dict[bytes, int] = {}
        offset = 0
        for item in self.laid:  # offsets in first-use order
            for entry in item.xattr_entries:
                if counts[entry] > 1 and entry not in shared:
                    shared[entry] = offset
                    offset += len(entry)
        return shared

    # -- the form of each inode --------------------------------------------------------
    def _shape(self, item: _Laid) -> None:
        spec = item.spec
        fmt = stat.S_IFMT(spec.mode)
        if fmt not in d.FILE_TYPES:
            raise UnwritableTree(f"inode {item.ino} has no file type EROFS knows (mode {spec.mode:o})")
        if fmt != stat.S_IFDIR and spec.children:
            raise UnwritableTree(f"inode {item.ino} has children but is not a directory")
        inline, shared = [], []
        for entry in item.xattr_entries:
            if entry in self.shared and len(shared) < MAX_SHARED_PER_INODE:
                shared.append(entry)
            else:
                inline.append(entry)
        item.inline_xattrs = b"".join(inline)
        item.shared_keys = shared
        if inline or shared:
            item.xattr_size = d.XATTR_IBODY_HEADER.size + 4 * len(shared) + len(item.inline_xattrs)
            if (item.xattr_size - d.XATTR_IBODY_HEADER.size) // 4 + 1 > U16_MAX:
                raise UnwritableTree(f"the xattrs of inode {item.ino} take {item.xattr_size} bytes")

        size = 0
        if fmt == stat.S_IFDIR:
            size = self._dirent_blocks(item)
        elif fmt in (stat.S_IFREG, stat.S_IFLNK):
            data = spec.data
            if isinstance(data, Chunks):
                if fmt != stat.S_IFREG:
                    raise UnwritableTree(f"inode {item.ino}: only regular files can refer to chunks")
                size = data.size
                self._check_chunks(item, data)
            else:
                item.payload = bytes(data)
                size = len(item.payload)
                if fmt == stat.S_IFLNK and not 0 < size < 4096:
                    raise UnwritableTree(f"symlink target of {size} bytes")
        elif spec.data:
            raise UnwritableTree(f"inode {item.ino} has data but is a device, fifo or socket")
        item.extended = (
            spec.uid > U16_MAX or spec.gid > U16_MAX or item.nlink > U16_MAX or size > U32_MAX
            or spec.mtime_ns != self.build_time_ns
        )
        if spec.uid > U32_MAX or spec.gid > U32_MAX or spec.uid < 0 or spec.gid < 0:
            raise UnwritableTree(f"owner {spec.uid}:{spec.gid} of inode {item.ino}")
        core = d.INODE_EXTENDED.size if item.extended else d.INODE_COMPACT.size
        head = core + item.xattr_size
        if isinstance(spec.data, Chunks) and fmt == stat.S_IFREG:
            item.layout = d.LAYOUT_CHUNK_BASED
            item.meta_size = d.round_up(head, d.CHUNK_INDEX.size) + d.CHUNK_INDEX.size * len(spec.data.refs)
            return
        payload_size = size
        tail = payload_size & (self.block_size - 1)
        if tail and head + tail <= self.block_size:
            item.layout = d.LAYOUT_FLAT_INLINE
            item.inline_tail = tail
        item.blocks = (payload_size - item.inline_tail + self.block_size - 1) >> self.blkszbits
        item.meta_size = head + item.inline_tail

    def _dirent_blocks(self, item: _Laid) -> int:
        """Split a directory's sorted entries (with "." and "..") into blocks; returns the directory's size."""
        spec = item.spec
        entries = sorted([(b".", spec), (b"..", item.parent), *spec.children.items()], key=lambda e: e[0])
        blocks: list[list[tuple[bytes, InodeSpec]]] = [[]]
        used = 0
        for entry in entries:
            need = d.DIRENT.size + len(entry[0])
            if used + need > self.block_size:
                blocks.append([])
                used = 0
            blocks[-1].append(entry)
            used += need
        item.dirents = blocks
        return ((len(blocks) - 1) << self.blkszbits) + used

    def _check_chunks(self, item: _Laid, chunks: Chunks) -> None:
        above = chunks.chunk_bits - self.blkszbits
        if not 0 <= above <= MAX_CHUNK_BITS_ABOVE_BLOCK:
            raise UnwritableTree(f"inode {item.ino}: chunks of 2^{chunks.chunk_bits} bytes with "
                                 f"{self.block_size}-byte blocks")
        count = (chunks.size + (1 << chunks.chunk_bits) - 1) >> chunks.chunk_bits
        if len(chunks.refs) != count:
            raise UnwritableTree(f"inode {item.ino}: {len(chunks.refs)} chunk references for {count} chunks")
        for ref in chunks.refs:
            if ref is not None and not (0 < ref.device <= len(self.devices) and 0 <= ref.block < U32_MAX):
                raise UnwritableTree(f"inode {item.ino}: chunk at block {ref.block} of device {ref.device}")

    # -- addresses -----------------------------------------------------------------------
    def _place(self) -> int:
        """Give each inode its position and each payload its blocks; returns the image's size in blocks."""
        block = self.block_size
        pos = d.round_up(self.devt_end, 1 << d.ISLOT_BITS)
        for item in self.laid:
            if item.inline_tail and (pos & (block - 1)) + item.meta_size > block:
                pos = d.round_up(pos, block)  # inline data must not cross a block boundary
            item.pos = pos
            pos = d.round_up(pos + item.meta_size, 1 << d.ISLOT_BITS)
        self.shared_start = pos
        shared_end = pos + sum(len(entry) for entry in self.shared)
        for entry, offset in self.shared.items():
            self.shared_ids[entry] = (pos + offset) >> 2
        next_block = (shared_end + block - 1) >> self.blkszbits
        for item in self.laid:
            if item.blocks:
                item.startblk = next_block
                next_block += item.blocks
        if self.laid[0].pos >> d.ISLOT_BITS > U16_MAX:
            raise UnwritableTree("the root inode lies too far into the image (too many devices)")
        if next_block > U32_MAX or shared_end >> 2 > U32_MAX:
            raise UnwritableTree(f"an image of {next_block} blocks is too large")
        return max(next_block, 1)

    @property
    def devt_slotoff(self) -> int:
        return (d.SUPER_OFFSET + BASE_SUPERBLOCK_SIZE) // d.DEVICE_SLOT.size

    @property
    def devt_end(self) -> int:
        return (self.devt_slotoff + len(self.devices)) * d.DEVICE_SLOT.size

    # -- bytes -----------------------------------------------------------------------------
    def image(self, uuid: bytes | None, volume_name: bytes) -> bytearray:
        out = bytearray(self.total_blocks << self.blkszbits)
        nids = {id(item.spec): item.pos >> d.ISLOT_BITS for item in self.laid}
        for item in self.laid:
            self._write_inode(out, item, nids)
        for entry, offset in self.shared.items():
            start = self.shared_start + offset
            out[start : start + len(entry)] = entry
        self._write_header(out, uuid, volume_name)
        return out

    def _write_inode(self, out: bytearray, item: _Laid, nids: dict[int, int]) -> None:
        spec = item.spec
        fmt = stat.S_IFMT(spec.mode)
        payload = self._dirent_bytes(item, nids) if fmt == stat.S_IFDIR else item.payload
        data = spec.data
        if item.layout == d.LAYOUT_CHUNK_BASED:
            assert isinstance(data, Chunks)
            size = data.size
            i_u = (data.chunk_bits - self.blkszbits) | d.CHUNK_FORMAT_INDEXES
        else:
            size = len(payload)
            if fmt in (stat.S_IFCHR, stat.S_IFBLK):
                i_u = encode_dev(*spec.rdev)
            elif fmt in (stat.S_IFIFO, stat.S_IFSOCK):
                i_u = 0
            else:
                i_u = item.startblk
        icount = 0 if not item.xattr_size else (item.xattr_size - d.XATTR_IBODY_HEADER.size) // 4 + 1
        i_format = (item.layout << d.I_DATALAYOUT_BIT) | int(item.extended)
        mode = stat.S_IMODE(spec.mode) | fmt
        pos = item.pos
        if item.extended:
            seconds, nsec = divmod(spec.mtime_ns, NSEC)
            core = d.INODE_EXTENDED.pack(i_format, icount, mode, 0, size, i_u, item.ino, spec.uid, spec.gid,
                                         seconds, nsec, item.nlink)
        else:
            core = d.INODE_COMPACT.pack(i_format, icount, mode, item.nlink, size, 0, i_u, item.ino, spec.uid,
                                        spec.gid)
        out[pos : pos + len(core)] = core
        pos += len(core)
        if item.xattr_size:
            ids = b"".join(self.shared_ids[entry].to_bytes(4, "little") for entry in item.shared_keys)
            body = d.XATTR_IBODY_HEADER.pack(0, len(item.shared_keys)) + ids + item.inline_xattrs
            out[pos : pos + len(body)] = body
            pos += len(body)
        if item.layout == d.LAYOUT_CHUNK_BASED:
            assert isinstance(data, Chunks)
            pos = d.round_up(pos, d.CHUNK_INDEX.size)
            pack = d.CHUNK_INDEX.pack
            null = pack(U16_MAX, 0, U32_MAX)
            indexes = b"".join(null if ref is None else pack(0, ref.device, ref.block) for ref in data.refs)
            out[pos : pos + len(indexes)] = indexes
            return
        in_blocks = len(payload) - item.inline_tail
        if item.inline_tail:
            out[pos : pos + item.inline_tail] = payload[in_blocks:]
        if in_blocks:
            start = item.startblk << self.blkszbits
            out[start : start + in_blocks] = payload[:in_blocks]

    def _dirent_bytes(self, item: _Laid, nids: dict[int, int]) -> bytes:
        """A directory's data: each block holds its dirents, then their names; every block but the last is
        padded with zeros to its end."""
        types = d.FILE_TYPES
        blocks = []
        for entries in item.dirents:
            nameoff = d.DIRENT.size * len(entries)
            heads = []
            for name, child in entries:
                heads.append(d.DIRENT.pack(nids[id(child)], nameoff, types[stat.S_IFMT(child.mode)]))
                nameoff += len(name)
            blocks.append(b"".join(heads) + b"".join(name for name, _ in entries))
        for i in range(len(blocks) - 1):
            blocks[i] = blocks[i].ljust(self.block_size, b"\0")
        return b"".join(blocks)

    def _write_header(self, out: bytearray, uuid: bytes | None, volume_name: bytes) -> None:
        slots = bytearray()
        uniaddr = self.total_blocks  # the devices follow the image in the unified address space
        for dev in self.devices:
            if len(dev.tag) > 64 or not 0 <= dev.blocks <= U32_MAX or uniaddr > U32_MAX:
                raise UnwritableTree(f"device of {dev.blocks} blocks (tag {dev.tag!r})")
            slots += d.DEVICE_SLOT.pack(dev.tag, dev.blocks, uniaddr, 0, 0)
            uniaddr += dev.blocks
        start = self.devt_slotoff * d.DEVICE_SLOT.size
        out[start : start + len(slots)] = slots
        if len(volume_name) > 16:
            raise UnwritableTree(f"volume name {volume_name!r} is longer than 16 bytes")
        incompat = 0
        if any(item.layout == d.LAYOUT_CHUNK_BASED for item in self.laid):
            incompat |= d.INCOMPAT_CHUNKED_FILE
        if self.devices:
            incompat |= d.INCOMPAT_DEVICE_TABLE

        fields = dict.fromkeys(d.SUPERBLOCK_FIELDS, 0)
        fields.update(
            magic=d.SUPER_MAGIC, feature_compat=d.COMPAT_SB_CHKSUM, blkszbits=self.blkszbits,
            rootnid_2b=self.laid[0].pos >> d.ISLOT_BITS, inos=len(self.laid), epoch=self.epoch,
            fixed_nsec=self.fixed_nsec, blocks_lo=self.total_blocks, uuid=bytes(16), volume_name=volume_name,
            feature_incompat=incompat, extra_devices=len(self.devices), devt_slotoff=self.devt_slotoff,
        )

        def superblock(uuid_bytes: bytes) -> bytes:
            fields["uuid"] = uuid_bytes
            return d.SUPERBLOCK.pack(*fields.values())[:BASE_SUPERBLOCK_SIZE]

        sb_end = d.SUPER_OFFSET + BASE_SUPERBLOCK_SIZE
        if uuid is None:
            out[d.SUPER_OFFSET : sb_end] = superblock(bytes(16))
            uuid = uuidlib.UUID(bytes=hashlib.sha256(out).digest()[:16], version=4).bytes
        if len(uuid) != 16:
            raise UnwritableTree("a UUID is 16 bytes")
        out[d.SUPER_OFFSET : sb_end] = superblock(uuid)
        length = self.block_size - d.SUPER_OFFSET if self.block_size > d.SUPER_OFFSET else self.block_size
        checksum = kernel_crc32c(bytes(out[d.SUPER_OFFSET : d.SUPER_OFFSET + length]))
        at = d.SUPER_OFFSET + d.SUPERBLOCK_CHECKSUM_OFFSET
        out[at : at + 4] = checksum.to_bytes(4, "little")


def encode_image(root: InodeSpec, *, devices: Sequence[Device] = (), block_size: int = 4096,
                 uuid: bytes | None = None, volume_name: bytes = b"") -> bytearray:
    """The bytes of an image of the tree at ``root``; ``devices`` are its extra devices, in device-table order."""
    return _Builder(root, devices, block_size).image(uuid, volume_name)


def write_image(root: InodeSpec, target: BinaryIO, *, devices: Sequence[Device] = (), block_size: int = 4096,
                uuid: bytes | None = None, volume_name: bytes = b"") -> WrittenImage:
    """Write the image of the tree at ``root`` to ``target`` (see ``encode_image``)."""
    builder = _Builder(root, devices, block_size)
    data = builder.image(uuid, volume_name)
    target.write(data)
    return WrittenImage(len(data), len(builder.laid), builder.laid[0].pos >> d.ISLOT_BITS)
