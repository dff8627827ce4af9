"""An opened EROFS image: the read-only filesystem interface of this package.

``ErofsImage`` ties the layers together (devices, superblock, metadata
spaces, inodes, directories, xattrs, file data) and offers the operations a
filesystem user needs, addressed by inode (``Inode``) or by path.
"""

from __future__ import annotations

import functools
import os
import stat as statmod
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from . import ondisk as d
from .cache import SizedLRU
from .data import DataReader, Extent
from .devices import BackingFile, DeviceSet
from .dirs import Directories, DirEntry
from .errors import CorruptImage, DeviceError, NotADirectory, PathNotFound
from .inode import Inode, decode_inode
from .metaspace import MetaSpace
from .superblock import Superblock, parse_device_table, parse_superblock
from .verity import VerifiedFile, VeritySpec
from .xattr import Xattrs, load_long_prefixes

MAX_SYMLINK_HOPS = 40
PATH_MAX = 4096
_new_tuple = tuple.__new__


class StatResult(NamedTuple):
    """What ``lstat`` shows for an inode, as the kernel computes it."""

    st_mode: int
    st_ino: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_blocks: int
    st_rdev_major: int
    st_rdev_minor: int
    st_mtime_ns: int

    @classmethod
    def of(cls, ino: Inode, st_ino: int, st_nlink: int) -> StatResult:
        """The stat of ``ino``, shown with inode number ``st_ino`` and ``st_nlink`` links."""
        major, minor = ino.rdev_pair
        # the tuple straight in field order: a FUSE listing with attributes makes one per entry, and the
        # generated __new__ of a NamedTuple would double the cost
        return _new_tuple(cls, (ino.mode, st_ino, st_nlink, ino.uid, ino.gid, ino.size, ino.blocks, major, minor,
                                ino.mtime_ns))

    @property
    def st_rdev(self) -> int:
        return os.makedev(self.st_rdev_major, self.st_rdev_minor)


def _as_bytes(path: str | bytes) -> bytes:
    return os.fsencode(path) if isinstance(path, str) else path


def open_devices(path: str, devices: Sequence[str], offset: int, verity: VeritySpec | None = None,
                 device_verity: Sequence[VeritySpec | None] = ()) -> tuple[Superblock, DeviceSet]:
    """The superblock of the image at ``offset`` in ``path``, and its devices (closed again on failure).

    A file with a ``VeritySpec`` (``verity`` for the image, ``device_verity``
    for the extra devices in order) is read through its hash tree, the
    superblock and device table included.
    """
    if len(device_verity) > len(devices):
        raise DeviceError(f"a hash tree is given for device {len(device_verity)} but only {len(devices)} "
                          "device(s) are")
    primary = open_backing(path, offset, verity, functools.partial(_image_end, path, offset, not devices))
    extras: list[BackingFile | VerifiedFile] = []
    try:
        sb = parse_superblock(primary)
        slots = parse_device_table(sb, primary)
        for index, device in enumerate(devices):
            spec = device_verity[index] if index < len(device_verity) else None
            blocks = slots[index].blocks if index < len(slots) else 0
            extras.append(open_backing(device, 0, spec, lambda blocks=blocks: blocks << sb.blkszbits))
        device_set = DeviceSet(primary, extras, sb.blkszbits)
        device_set.attach_table(slots)
    except BaseException:
        primary.close()
        for dev in extras:
            dev.close()
        raise
    return sb, device_set


def open_backing(path: str, base: int, verity: VeritySpec | None,
                 data_end: Callable[[], int]) -> BackingFile | VerifiedFile:
    """``path`` from byte ``base``, read through its hash tree when ``verity`` says where it is."""
    if verity is None:
        return BackingFile(path, base)
    return verity.open(path, base, data_end)


def _image_end(path: str, offset: int, flat: bool) -> int:
    """Where the image at ``offset`` of ``path`` ends, its extra devices included in the flat layout, as its
    superblock says (read unchecked: it only places an appended tree, which then checks it)."""
    plain = BackingFile(path, offset)
    try:
        sb = parse_superblock(plain)
        blocks = sb.primary_blocks
        if flat:
            blocks = max([blocks, *(slot.uniaddr + slot.blocks for slot in parse_device_table(sb, plain))])
    finally:
        plain.close()
    return offset + (blocks << sb.blkszbits)


def load_inode(sb: Superblock, meta: MetaSpace, metabox: MetaSpace | None, nid: int) -> Inode:
    """Decode inode ``nid``: in the metabox when its nid says so, else in the primary device's metadata."""
    if nid >> d.DIRENT_NID_METABOX_BIT:
        if metabox is None:
            raise CorruptImage("nid has the metabox bit but the image has no metabox", nid)
        space, base = metabox, 0
    else:
        space, base = meta, sb.meta_blkaddr << sb.blkszbits
    iloc = base + ((nid & d.DIRENT_NID_MASK) << d.ISLOT_BITS)
    if iloc >= space.size:
        raise CorruptImage(f"nid {nid} lies past the end of the {space.name}", nid)
    try:
        return decode_inode(nid, space, iloc, sb.epoch, sb.fixed_nsec)
    except CorruptImage as exc:
        raise exc.at(nid, "inode") from None


class ErofsImage:
    """A read-only EROFS filesystem image (plus its extra devices).

    ``devices`` are the extra device files in device-table order, like the
    kernel's ``-o device=``; leave them out for the flat layout, where the
    extra devices are appended to the primary file. ``offset`` is where the
    image starts inside ``path``. ``verity`` (and ``device_verity``, for the
    extra devices in order, None for one read as it is) has every block read
    checked against a dm-verity hash tree: a block that does not match raises
    ``IntegrityError`` naming the inode read, a wrong root hash at once.
    """

    def __init__(
        self,
        path: str,
        devices: list[str] | tuple[str, ...] = (),
        offset: int = 0,
        *,
        cache_bytes: int = 32 << 20,
        meta_cache_bytes: int = 16 << 20,
        inode_cache: int = 65536,
        verity: VeritySpec | None = None,
        device_verity: Sequence[VeritySpec | None] = (),
    ):
        self.path = path
        sb, devs = open_devices(path, devices, offset, verity, device_verity)
        self.sb, self.devices = sb, devs
        # each part is built from the ones before it, in the order the kernel mounts an image
        try:
            primary = devs.primary
            pclusters: SizedLRU[bytes] = SizedLRU(cache_bytes)  # decoded pclusters, of the metabox and of files
            self.meta = MetaSpace("primary device", sb.blkszbits, primary.size, primary.pread, meta_cache_bytes)
            self.metabox: MetaSpace | None = None
            if sb.metabox_nid or sb.incompat(d.INCOMPAT_METABOX):
                # the metabox inode lives in the primary metadata; its data is read without fragments, since
                # the packed inode that holds them may itself live in the metabox
                box = load_inode(sb, self.meta, None, sb.metabox_nid)
                box_reader = DataReader(sb, devs, pclusters, packed_inode=None)
                self.metabox = MetaSpace("metabox", sb.blkszbits, box.size, functools.partial(box_reader.read, box),
                                         meta_cache_bytes)
            self.inode: Callable[[int], Inode] = functools.lru_cache(maxsize=inode_cache)(
                functools.partial(load_inode, sb, self.meta, self.metabox))
            self.packed_inode: Inode | None = self.inode(sb.packed_nid) if sb.packed_nid else None
            self._data = DataReader(sb, devs, pclusters, self.packed_inode)
            self._dirs = Directories(sb.blkszbits, self._data.read, self.inode, meta_cache_bytes)
            self._xattrs = Xattrs(sb, self.meta, self.metabox,
                                  load_long_prefixes(sb, self.meta, self.inode, self._data.read))
            self.root = self.inode(sb.root_nid)
            if not self.root.is_dir:
                raise CorruptImage("the root inode is not a directory", sb.root_nid)
        except BaseException:
            devs.close()
            raise

    # -- context management ------------------------------------------------
    def close(self) -> None:
        self.devices.close()

    def __enter__(self) -> ErofsImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inodes ------------------------------------------------------------
    @property
    def root_nid(self) -> int:
        return self.sb.root_nid

    @property
    def total_blocks(self) -> int:
        """Blocks of the primary device and every extra device."""
        return self.sb.primary_blocks + sum(slot.blocks for slot in self.devices.slots)

    def stat(self, ino: Inode) -> StatResult:
        return StatResult.of(ino, ino.nid, ino.nlink)

    # -- contents ------------------------------------------------------------
    def read(self, ino: Inode, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of the file at ``offset``."""
        return self._data.read(ino, offset, length)

    def costly_read(self, ino: Inode, offset: int, length: int) -> bool:
        """Whether reading this range decodes much (a slow algorithm or a big extent, not yet cached)."""
        return self._data.costly(ino, offset, length)

    def extent_at(self, ino: Inode, offset: int) -> Extent:
        """The extent of the file that holds byte ``offset``."""
        return self._data.extent_at(ino, offset)

    def extents(self, ino: Inode, offset: int = 0, end: int | None = None) -> list[Extent]:
        """The extents that together cover bytes ``[offset, end)`` of the file (to its end by default)."""
        return self._data.extents(ino, offset, end)

    def hole_end(self, ino: Inode, offset: int) -> int | None:
        """Where the hole at ``offset`` ends, or None when data is stored there."""
        return self._data.hole_end(ino, offset)

    def readlink(self, ino: Inode) -> bytes:
        if not ino.is_symlink:
            raise CorruptImage("readlink on an inode that is not a symlink", ino.nid)
        if ino.size >= PATH_MAX or ino.size == 0:
            raise CorruptImage(f"symlink target of {ino.size} bytes", ino.nid)
        target = self._data.read(ino, 0, ino.size)
        if len(target) != ino.size or b"\0" in target:
            raise CorruptImage("malformed symlink target", ino.nid)
        return target

    def lookup(self, dir_ino: Inode, name: bytes) -> Inode | None:
        """The child ``name`` of ``dir_ino`` (``..`` included), or None."""
        found = self._dirs.lookup(dir_ino, name)
        return None if found is None else self.inode(found[0])

    def dirents(self, dir_ino: Inode, start: int = 0) -> Iterator[DirEntry]:
        """Every directory entry (``.`` and ``..`` too) from position ``start``, in on-disk order."""
        return self._dirs.entries(dir_ino, start)

    def entries(self, dir_ino: Inode, start: int = 0) -> Iterator[DirEntry]:
        """Directory entries from position ``start``, ``.`` and ``..`` left out."""
        for entry in self._dirs.entries(dir_ino, start):
            if entry.name not in (b".", b".."):
                yield entry

    def dirent_blocks(self, dir_ino: Inode) -> int:
        """How many dirent blocks the directory has (raises ``NotADirectory`` for other inodes)."""
        return self._dirs.block_count(dir_ino)

    def dirent_block(self, dir_ino: Inode, index: int) -> list[DirEntry]:
        """The entries of dirent block ``index`` alone, checked as ``fsck`` does (sorted, valid names)."""
        return self._dirs.block_entries(dir_ino, index, check=True)

    def listdir(self, dir_ino: Inode) -> list[bytes]:
        return [entry.name for entry in self.entries(dir_ino)]

    def xattrs(self, ino: Inode) -> list[tuple[bytes, bytes]]:
        """``(name, value)`` of every xattr the kernel shows, in on-disk order."""
        return self._xattrs.items(ino)

    def listxattr(self, ino: Inode) -> list[bytes]:
        return self._xattrs.names(ino)

    def getxattr(self, ino: Inode, name: bytes) -> bytes:
        return self._xattrs.get(ino, name)

    # -- paths ---------------------------------------------------------------
    def resolve(self, path: str | bytes, follow: bool = False) -> Inode:
        """The inode at ``path`` (relative to the image root).

        Symlinks inside the path are followed, within the image (absolute
        targets start at the image root); the last component only with
        ``follow``.
        """
        todo = [c for c in _as_bytes(path).split(b"/") if c and c != b"."]
        todo.reverse()
        stack = [self.root]
        hops = 0
        while todo:
            name = todo.pop()
            if name == b"..":
                if len(stack) > 1:
                    stack.pop()
                continue
            cur = stack[-1]
            if not cur.is_dir:
                raise NotADirectory(f"{_as_bytes(path).decode(errors='replace')}: not a directory")
            child = self.lookup(cur, name)
            if child is None:
                raise PathNotFound(f"{_as_bytes(path).decode(errors='replace')}: no such file or directory")
            if child.is_symlink and (todo or follow):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise PathNotFound(f"{_as_bytes(path).decode(errors='replace')}: too many levels of symlinks")
                target = self.readlink(child)
                if target.startswith(b"/"):
                    stack = [self.root]
                todo.extend(reversed([c for c in target.split(b"/") if c and c != b"."]))
                continue
            stack.append(child)
        return stack[-1]

    def walk(self, top: str | bytes = b"/") -> Iterator[tuple[bytes, Inode]]:
        """Every path below ``top`` (``top`` first), depth first in readdir order."""
        start = _as_bytes(top)
        root = self.resolve(start)
        prefix = b"/" + start.strip(b"/") if start.strip(b"/") else b""
        yield (prefix or b"/"), root
        if not root.is_dir:
            return
        stack: list[tuple[bytes, Iterator[DirEntry], int]] = [(prefix, self.entries(root), root.nid)]
        active = {root.nid}
        while stack:
            base, it, nid = stack[-1]
            entry = next(it, None)
            if entry is None:
                stack.pop()
                active.discard(nid)
                continue
            if b"/" in entry.name or b"\0" in entry.name:
                # such a path would name something else (or nothing); extraction must never follow it
                raise CorruptImage(f"invalid name {entry.name!r} in {(base or b'/').decode(errors='replace')}", nid)
            path = base + b"/" + entry.name
            child = self.inode(entry.nid)
            if child.is_dir and child.nid in active:
                raise CorruptImage(f"directory loop: {path.decode(errors='replace')} is one of its own ancestors", nid)
            yield path, child
            if child.is_dir:
                stack.append((path, self.entries(child), child.nid))
                active.add(child.nid)

    def file_type(self, ino: Inode) -> str:
        return {
            statmod.S_IFREG: "file",
            statmod.S_IFDIR: "dir",
            statmod.S_IFLNK: "symlink",
            statmod.S_IFCHR: "chardev",
            statmod.S_IFBLK: "blockdev",
            statmod.S_IFIFO: "fifo",
            statmod.S_IFSOCK: "socket",
        }[statmod.S_IFMT(ino.mode)]
