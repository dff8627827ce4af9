"""An opened EROFS image: the read-only filesystem interface of this package.

``ErofsImage`` ties the layers together (devices, superblock, metadata
spaces, inodes, directories, xattrs, file data) and offers the operations a
filesystem user needs, addressed by inode (``Inode``) or by path.
"""

from __future__ import annotations

import functools
import os
import stat as statmod
from collections.abc import Iterator
from dataclasses import dataclass

from . import ondisk as d
from .data import DataReader
from .devices import BackingFile, DeviceSet
from .dirs import Directories, DirEntry
from .errors import CorruptImage, NotADirectory, PathNotFound
from .inode import Inode, decode_inode
from .metaspace import MetaSpace
from .superblock import Superblock, parse_device_table, parse_superblock
from .xattr import Xattrs

MAX_SYMLINK_HOPS = 40
PATH_MAX = 4096


@dataclass(frozen=True)
class StatResult:
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

    @property
    def st_rdev(self) -> int:
        return os.makedev(self.st_rdev_major, self.st_rdev_minor)


def _as_bytes(path: str | bytes) -> bytes:
    return os.fsencode(path) if isinstance(path, str) else path


class ErofsImage:
    """A read-only EROFS filesystem image (plus its extra devices).

    ``devices`` are the extra device files in device-table order, like the
    kernel's ``-o device=``; leave them out for the flat layout, where the
    extra devices are appended to the primary file. ``offset`` is where the
    image starts inside ``path``.
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
    ):
        self.path = path
        primary = BackingFile(path, offset)
        extras: list[BackingFile] = []
        try:
            extras = [BackingFile(p) for p in devices]
            self.sb: Superblock = parse_superblock(primary)
            self.devices = DeviceSet(primary, extras, self.sb.blkszbits)
            self.devices.attach_table(parse_device_table(self.sb, primary))
        except BaseException:
            primary.close()
            for dev in extras:
                dev.close()
            raise
        bits = self.sb.blkszbits
        self.meta = MetaSpace("primary device", bits, primary.size, primary.pread, meta_cache_bytes)
        self.metabox: MetaSpace | None = None
        self.inode = functools.lru_cache(maxsize=inode_cache)(self._load_inode)
        self._meta_base = self.sb.meta_blkaddr << bits
        self.reader = DataReader(self, cache_bytes)
        self.dirs = Directories(self, meta_cache_bytes)
        if self.sb.metabox_nid or self.sb.incompat(d.INCOMPAT_METABOX):
            box = self.inode(self.sb.metabox_nid)
            self.metabox = MetaSpace("metabox", bits, box.size, self._metabox_reader(box), meta_cache_bytes)
        self.packed_inode: Inode | None = self.inode(self.sb.packed_nid) if self.sb.packed_nid else None
        self.xattrs = Xattrs(self)
        self.root = self.inode(self.sb.root_nid)
        if not self.root.is_dir:
            raise CorruptImage("the root inode is not a directory", self.sb.root_nid)

    def _metabox_reader(self, box: Inode):
        def read(pos: int, length: int) -> bytes:
            return self.reader.read(box, pos, length)

        return read

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

    def _load_inode(self, nid: int) -> Inode:
        """The decoded inode ``nid`` (``inode(nid)`` is the cached form)."""
        if nid >> d.DIRENT_NID_METABOX_BIT:
            if self.metabox is None:
                raise CorruptImage("nid has the metabox bit but the image has no metabox", nid)
            space, base = self.metabox, 0
        else:
            space, base = self.meta, self._meta_base
        iloc = base + ((nid & d.DIRENT_NID_MASK) << d.ISLOT_BITS)
        if iloc >= space.size:
            raise CorruptImage(f"nid {nid} lies past the end of the {space.name}", nid)
        try:
            return decode_inode(nid, space, iloc, self.sb.epoch, self.sb.fixed_nsec)
        except CorruptImage as exc:
            raise exc.at(nid, "inode") from None

    def stat(self, ino: Inode) -> StatResult:
        major, minor = ino.rdev_pair
        return StatResult(
            st_mode=ino.mode,
            st_ino=ino.nid,
            st_nlink=ino.nlink,
            st_uid=ino.uid,
            st_gid=ino.gid,
            st_size=ino.size,
            st_blocks=ino.blocks,
            st_rdev_major=major,
            st_rdev_minor=minor,
            st_mtime_ns=ino.mtime_ns,
        )

    # -- contents ------------------------------------------------------------
    def read(self, ino: Inode, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of the file at ``offset``."""
        return self.reader.read(ino, offset, length)

    def readlink(self, ino: Inode) -> bytes:
        if not ino.is_symlink:
            raise CorruptImage("readlink on an inode that is not a symlink", ino.nid)
        if ino.size >= PATH_MAX or ino.size == 0:
            raise CorruptImage(f"symlink target of {ino.size} bytes", ino.nid)
        target = self.reader.read(ino, 0, ino.size)
        if len(target) != ino.size or b"\0" in target:
            raise CorruptImage("malformed symlink target", ino.nid)
        return target

    def lookup(self, dir_ino: Inode, name: bytes) -> Inode | None:
        """The child ``name`` of ``dir_ino``, or None."""
        found = self.dirs.lookup(dir_ino, name)
        return None if found is None else self.inode(found[0])

    def entries(self, dir_ino: Inode, start: int = 0) -> Iterator[DirEntry]:
        """Directory entries from position ``start``, ``.`` and ``..`` left out."""
        for entry in self.dirs.entries(dir_ino, start):
            if entry.name not in (b".", b".."):
                yield entry

    def listdir(self, dir_ino: Inode) -> list[bytes]:
        return [entry.name for entry in self.entries(dir_ino)]

    def listxattr(self, ino: Inode) -> list[bytes]:
        return self.xattrs.names(ino)

    def getxattr(self, ino: Inode, name: bytes) -> bytes:
        return self.xattrs.get(ino, name)

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
