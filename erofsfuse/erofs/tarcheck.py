"""Proving that an image holds exactly the content of an OCI layer tarball.

The tarball is streamed once (never unpacked): each entry becomes a record of
what a filesystem built from it must show, with a SHA-256 of every regular
file's bytes. The image is then walked and compared with those records.

What counts as the same content is what a layer means once it is applied:

* paths are cleaned as an applier cleans them (``./``, ``/``, ``..`` cannot
  leave the root); a later entry for a path replaces the earlier one;
* directories the tarball only implies (a parent never listed, and the root
  unless ``./`` is listed) must be directories in the image, with whatever
  attributes the builder gave them;
* hard links are compared as link groups (the same inode in both), symlink
  permission bits not at all (Linux has no way to set them);
* mtimes are the PAX ``mtime`` to the nanosecond when the tarball has one,
  whole seconds otherwise (and whole seconds where the image has a compact
  inode, which has no nanoseconds of its own); xattrs are the
  ``SCHILY.xattr.*`` and ``LIBARCHIVE.xattr.*`` records;
* AUFS whiteouts (``.wh.NAME``) and opaque markers (``.wh..wh..opq``) may be
  kept as they are, or stored in overlay form: a 0:0 character device
  ``NAME`` (whose own attributes mean nothing) and an ``overlay.opaque``
  xattr of ``y`` on the directory, in the ``trusted.`` or ``user.``
  namespace; a directory holding such whiteouts may also carry the empty
  ``trusted.overlay.origin`` that mkfs.erofs adds.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import decimal
import gzip
import hashlib
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import unquote_to_bytes

import pyzstd

from .errors import ErofsError
from .image import ErofsImage
from .inode import Inode
from .overlay import OPAQUE_MARKER, OPAQUE_XATTRS, WHITEOUT_PREFIX, is_whiteout
from .stream import chunks

ORIGIN_XATTR = b"trusted.overlay.origin"
READ_SIZE = 1 << 20

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_NS = decimal.Decimal(1_000_000_000)
_MTIME_LIMIT = decimal.Decimal(2**63)  # seconds: beyond any time a filesystem holds (or any int worth building)


class LayerError(ErofsError):
    """The layer tarball cannot be read, or holds something no filesystem can (the message says what)."""


@dataclass(eq=False, slots=True)
class LayerInode:
    """One file of the layer as the tarball describes it; hard-linked paths share one."""

    kind: str  # the names ErofsImage.file_type uses
    implied: bool = False  # a directory the tarball never lists: its attributes are unknown
    mode: int = 0  # permission bits
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    size: int = 0
    sha256: bytes | None = None
    target: bytes | None = None
    rdev: tuple[int, int] | None = None
    links: int = 0  # paths naming it


@dataclass
class Layer:
    """What a layer tarball holds: every path (``/``-rooted bytes, the root is ``/``) and its inode."""

    paths: dict[bytes, LayerInode]
    whiteout_dirs: set[bytes]  # directories holding ``.wh.NAME`` entries
    file_bytes: int = 0


@dataclass(frozen=True)
class Difference:
    """One way the image differs from the layer, at ``path``."""

    path: bytes
    message: str

    def sort_key(self) -> list[bytes]:
        """Depth first with names in byte order, the order of an EROFS directory walk."""
        return self.path.split(b"/")

    def __str__(self) -> str:
        return f"{self.path.decode('utf-8', 'backslashreplace')}: {self.message}"


# -- reading the tarball -------------------------------------------------------------
def read_layer(path: str, on_bytes: Callable[[int], None] | None = None) -> Layer:
    """The content of the tarball at ``path`` (plain, gzip or zstd), streamed once.

    ``on_bytes`` hears how many more bytes of the file were read, for progress.
    """
    reader = _LayerReader()
    position = 0
    with open(path, "rb") as raw, _decompressed(raw) as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
                while (member := tar.next()) is not None:
                    tar.members.clear()  # tarfile keeps every header it read; a layer may have millions
                    reader.add(member, tar)
                    if on_bytes is not None:
                        now = raw.tell()
                        on_bytes(now - position)
                        position = now
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, pyzstd.ZstdError) as exc:
            raise LayerError(f"{path}: not a readable tarball: {exc}") from None
        except LayerError as exc:
            raise LayerError(f"{path}: {exc}") from None
    return reader.layer


@contextlib.contextmanager
def _decompressed(raw: BinaryIO) -> Iterator[BinaryIO]:
    """The tar stream inside ``raw``, recognised by its first bytes rather than its name."""
    magic = raw.read(4)
    raw.seek(0)
    if magic.startswith(_GZIP_MAGIC):
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            yield stream
    elif magic.startswith(_ZSTD_MAGIC):
        with pyzstd.ZstdFile(raw, "rb") as stream:
            yield stream
    else:
        yield raw


class _LayerReader:
    """Applies tar entries one by one to a ``Layer``, the way an applier would apply them to a directory."""

    def __init__(self) -> None:
        self.layer = Layer({b"/": LayerInode("dir", implied=True, links=1)}, set())

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        path = clean_path(_raw(member.name))
        if path == b"/" and not member.isdir():
            raise LayerError(f"the root is a {member.type!r} entry, not a directory")
        if member.islnk():
            target = clean_path(_raw(member.linkname))
            node = self.layer.paths.get(target)
            if node is None or node.kind == "dir":
                what = "not in the layer" if node is None else "a directory"
                raise LayerError(f"{_show(path)}: hard link to {_show(target)}, which is {what}")
            if path != target:
                self._place(path, node)
            return
        node = self._inode(member, path)
        if node.kind == "file":
            node.sha256 = self._hash_data(member, tar)
            self.layer.file_bytes += node.size
        name = path.rpartition(b"/")[2]
        if name.startswith(WHITEOUT_PREFIX) and name != OPAQUE_MARKER:
            self.layer.whiteout_dirs.add(_parent(path))
        self._place(path, node)

    def _inode(self, member: tarfile.TarInfo, path: bytes) -> LayerInode:
        node = LayerInode(_kind(member, path), mode=member.mode & 0o7777, uid=member.uid, gid=member.gid,
                          mtime_ns=_mtime_ns(member, path), xattrs=_xattrs(member, path))
        if node.kind == "symlink":
            node.target = _raw(member.linkname)
        elif node.kind in ("chardev", "blockdev"):
            node.rdev = (member.devmajor, member.devminor)
        elif node.kind == "file":
            node.size = member.size
        return node

    @staticmethod
    def _hash_data(member: tarfile.TarInfo, tar: tarfile.TarFile) -> bytes:
        digest = hashlib.sha256()
        data = tar.extractfile(member)
        assert data is not None  # a regular file always has a data stream
        while piece := data.read(READ_SIZE):
            digest.update(piece)
        return digest.digest()

    def _place(self, path: bytes, node: LayerInode) -> None:
        """Make ``path`` name ``node``, replacing what was there (a directory stays, with the new attributes)."""
        paths = self.layer.paths
        self._make_parents(path)
        old = paths.get(path)
        if old is not None:
            if old.kind == "dir" and node.kind == "dir":
                node.links = old.links
                paths[path] = node
                return
            old.links -= 1
            if old.kind == "dir":  # replaced by a non-directory: everything below it goes too
                below = path + b"/"
                for gone in [p for p in paths if p.startswith(below)]:
                    paths.pop(gone).links -= 1
        node.links += 1
        paths[path] = node

    def _make_parents(self, path: bytes) -> None:
        paths = self.layer.paths
        missing = []
        parent = _parent(path)
        while parent not in paths:
            missing.append(parent)
            parent = _parent(parent)
        if paths[parent].kind != "dir":
            raise LayerError(f"{_show(path)}: {_show(parent)} is not a directory in the layer")
        for directory in missing:
            paths[directory] = LayerInode("dir", implied=True, links=1)


def clean_path(name: bytes) -> bytes:
    """``name`` as a path from the root: ``.`` and empty components dropped, ``..`` never above the root."""
    parts: list[bytes] = []
    for part in name.split(b"/"):
        if part == b"..":
            if parts:
                parts.pop()
        elif part and part != b".":
            parts.append(part)
    return b"/" + b"/".join(parts)


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0] or b"/"


def _child(directory: bytes, name: bytes) -> bytes:
    return directory.rstrip(b"/") + b"/" + name


def _raw(text: str) -> bytes:
    """The bytes of a name or value tarfile decoded (utf-8, undecodable bytes kept as surrogates)."""
    return text.encode("utf-8", "surrogateescape")


def _kind(member: tarfile.TarInfo, path: bytes) -> str:
    for test, kind in ((member.isreg, "file"), (member.isdir, "dir"), (member.issym, "symlink"),
                       (member.ischr, "chardev"), (member.isblk, "blockdev"), (member.isfifo, "fifo")):
        if test():
            return kind
    raise LayerError(f"{_show(path)}: tar entry type {member.type!r} cannot be held by a filesystem")


def _mtime_ns(member: tarfile.TarInfo, path: bytes) -> int:
    """The PAX ``mtime`` to the nanosecond (tarfile keeps only a float), else the header's whole seconds."""
    text = member.pax_headers.get("mtime")
    if text is None:
        return int(member.mtime) * 1_000_000_000
    try:
        seconds = decimal.Decimal(text)
    except decimal.InvalidOperation:
        seconds = decimal.Decimal("NaN")
    if not seconds.is_finite() or seconds.copy_abs() >= _MTIME_LIMIT:
        raise LayerError(f"{_show(path)}: PAX mtime {text[:40]!r} is not a time")
    with decimal.localcontext(prec=64):  # exact for every time below the limit, to the nanosecond
        return int((seconds * _NS).to_integral_value(rounding=decimal.ROUND_FLOOR))


def _xattrs(member: tarfile.TarInfo, path: bytes) -> dict[bytes, bytes]:
    """``SCHILY.xattr.NAME=value`` (raw bytes) and ``LIBARCHIVE.xattr.NAME=base64`` (NAME %-escaped)."""
    out: dict[bytes, bytes] = {}
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            out[_raw(key[len("SCHILY.xattr."):])] = _raw(value)
        elif key.startswith("LIBARCHIVE.xattr."):
            try:
                decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
            except binascii.Error:
                raise LayerError(f"{_show(path)}: {key} is not base64") from None
            out[unquote_to_bytes(key[len("LIBARCHIVE.xattr."):])] = decoded
    return out


# -- comparing with the image -----------------------------------------------------------
def compare_layer(img: ErofsImage, layer: Layer, on_entry: Callable[[], None] | None = None) -> list[Difference]:
    """Every difference between ``img`` and ``layer``, in directory-walk order of their paths."""
    return _Comparison(img, layer, on_entry).run()


class _Comparison:
    """One walk of the image, taking each path off the layer's list as the image shows it."""

    def __init__(self, img: ErofsImage, layer: Layer, on_entry: Callable[[], None] | None):
        self.img = img
        self.layer = layer
        self.pending = dict(layer.paths)  # what the image has not shown yet
        self.on_entry = on_entry
        self.found: list[Difference] = []
        self.extra_dirs: set[bytes] = set()  # reported as a whole: nothing below them is
        self.retyped: set[bytes] = set()  # a different type in each: what is below is not compared either
        # link groups: the first image inode seen for each layer inode, and the reverse
        self.nid_of: dict[int, tuple[int, bytes]] = {}
        self.node_of: dict[int, tuple[LayerInode, bytes]] = {}
        self.compared: set[tuple[int, int]] = set()  # (nid, layer inode) of multiply linked files

    def differ(self, path: bytes, message: str) -> None:
        self.found.append(Difference(path, message))

    def run(self) -> list[Difference]:
        for path, ino in self.img.walk():
            if self.on_entry is not None:
                self.on_entry()
            self._visit(path, ino)
        self._report_missing()
        self.found.sort(key=Difference.sort_key)
        return self.found

    def _visit(self, path: bytes, ino: Inode) -> None:
        parent = _parent(path)
        if parent in self.extra_dirs or parent in self.retyped:
            if ino.is_dir:
                self.extra_dirs.add(path)
            return
        node = self.pending.pop(path, None)
        if node is None:
            if not self._overlay_whiteout(path, ino):
                self.differ(path, f"{self.img.file_type(ino)} in the image, not in the layer")
                if ino.is_dir:
                    self.extra_dirs.add(path)
            return
        try:
            for message in self._differences(path, ino, node):
                self.differ(path, message)
        except ErofsError as exc:
            self.differ(path, f"cannot be read from the image: {exc}")

    def _overlay_whiteout(self, path: bytes, ino: Inode) -> bool:
        """Whether ``path`` is the overlay form of a ``.wh.`` entry of the layer (which is then accounted for)."""
        if not is_whiteout(ino):
            return False
        parent, _, name = path.rpartition(b"/")
        marker = _child(parent or b"/", WHITEOUT_PREFIX + name)
        return self.pending.pop(marker, None) is not None

    def _differences(self, path: bytes, ino: Inode, node: LayerInode) -> Iterator[str]:
        kind = self.img.file_type(ino)
        if kind != node.kind:
            self.retyped.add(path)
            yield f"type {node.kind} in the layer, {kind} in the image"
            return
        if kind == "dir":
            yield from self._directory(path, ino, node)
            return
        link = self._link_difference(path, ino, node)
        if link is not None:
            yield link
        if node.links > 1 or ino.nlink > 1:
            if (ino.nid, id(node)) in self.compared:
                return  # another name of this inode, already compared
            self.compared.add((ino.nid, id(node)))
        yield from self._attributes(ino, node)
        yield from _xattr_differences(node.xattrs, dict(self.img.xattrs(ino)))
        if kind == "symlink":
            target = self.img.readlink(ino)
            if target != node.target:
                yield f"symlink target {_show(node.target or b'')!r} in the layer, {_show(target)!r} in the image"
        elif kind in ("chardev", "blockdev"):
            if ino.rdev_pair != node.rdev:
                yield "device {}:{} in the layer, {}:{} in the image".format(*(node.rdev or ()), *ino.rdev_pair)
        elif kind == "file":
            yield from self._content(ino, node)

    @staticmethod
    def _attributes(ino: Inode, node: LayerInode) -> Iterator[str]:
        """Mode (not a symlink's: Linux cannot set it), owner and mtime."""
        if not stat.S_ISLNK(ino.mode) and stat.S_IMODE(ino.mode) != node.mode:
            yield f"mode {node.mode:04o} in the layer, {stat.S_IMODE(ino.mode):04o} in the image"
        if (ino.uid, ino.gid) != (node.uid, node.gid):
            yield f"owner {node.uid}:{node.gid} in the layer, {ino.uid}:{ino.gid} in the image"
        if _mtime(ino) != _mtime(ino, node.mtime_ns):
            yield f"mtime {_show_ns(node.mtime_ns)} in the layer, {_show_ns(ino.mtime_ns)} in the image"

    def _directory(self, path: bytes, ino: Inode, node: LayerInode) -> Iterator[str]:
        """A directory's attributes and xattrs, with the overlay forms of AUFS markers accepted: the layer's
        opaque marker as an ``overlay.opaque`` xattr of ``y``, and mkfs.erofs's empty ``trusted.overlay.origin``
        on a directory holding whiteouts."""
        shown = dict(self.img.xattrs(ino))
        marker = _child(path, OPAQUE_MARKER)
        if marker in self.pending and self.img.lookup(ino, OPAQUE_MARKER) is None:
            del self.pending[marker]
            opaque = [name for name in OPAQUE_XATTRS if name not in node.xattrs and shown.get(name) == b"y"]
            if not opaque:
                yield "opaque in the layer, not in the image"
            for name in opaque:
                del shown[name]
        if path in self.layer.whiteout_dirs and ORIGIN_XATTR not in node.xattrs and shown.get(ORIGIN_XATTR) == b"":
            del shown[ORIGIN_XATTR]
        if not node.implied:  # what the builder gave a directory the layer never lists is not the layer's content
            yield from self._attributes(ino, node)
            yield from _xattr_differences(node.xattrs, shown)

    def _link_difference(self, path: bytes, ino: Inode, node: LayerInode) -> str | None:
        """Whether ``path`` is linked to the same other paths in both (first names of each inode remembered)."""
        if node.links < 2 and ino.nlink < 2:
            return None
        first_nid, first_path = self.nid_of.setdefault(id(node), (ino.nid, path))
        if first_nid != ino.nid:
            return f"hard link to {_show(first_path)} in the layer, a separate file in the image"
        first_node, first_path = self.node_of.setdefault(ino.nid, (node, path))
        if first_node is not node:
            return f"hard link to {_show(first_path)} in the image, a separate file in the layer"
        return None

    def _content(self, ino: Inode, node: LayerInode) -> Iterator[str]:
        if ino.size != node.size:
            yield f"size {node.size} in the layer, {ino.size} in the image"
            return
        digest = hashlib.sha256()
        for _, data in chunks(self.img, ino, READ_SIZE):
            digest.update(data)
        if digest.digest() != node.sha256:
            expected = (node.sha256 or b"").hex()
            yield f"content differs (sha256 {expected} in the layer, {digest.hexdigest()} in the image)"

    def _report_missing(self) -> None:
        """What the layer has and the image never showed; below a missing directory only the directory."""
        missing = self.pending
        for path, node in missing.items():
            parent, name = _parent(path), path.rpartition(b"/")[2]
            if parent in missing or parent in self.retyped:
                continue
            if name == OPAQUE_MARKER:
                self.differ(parent, "opaque in the layer, not in the image")
            elif name.startswith(WHITEOUT_PREFIX):
                deleted = _child(parent, name[len(WHITEOUT_PREFIX):])
                self.differ(deleted, "whiteout in the layer, missing from the image")
            else:
                self.differ(path, f"{node.kind} in the layer, missing from the image")


def _mtime(ino: Inode, ns: int | None = None) -> int:
    """``ns`` (default: the inode's mtime) as the inode can hold it: a compact inode has no nanoseconds of its
    own (all share the superblock's), so mkfs.erofs drops them from a file whose seconds fit one."""
    ns = ino.mtime_ns if ns is None else ns
    return ns // 1_000_000_000 if ino.compact else ns


def _xattr_differences(expected: dict[bytes, bytes], shown: dict[bytes, bytes]) -> Iterator[str]:
    for name in sorted(expected.keys() | shown.keys()):
        want, have = expected.get(name), shown.get(name)
        if want == have:
            continue
        label = _show(name)
        if have is None:
            yield f"xattr {label} in the layer, missing from the image"
        elif want is None:
            yield f"xattr {label} in the image, not in the layer"
        else:
            yield f"xattr {label} is {_show_value(want)} in the layer, {_show_value(have)} in the image"


def _show(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


def _show_value(value: bytes, limit: int = 32) -> str:
    """A short rendering of an xattr value: quoted text when printable, else hex."""
    cut = value[:limit]
    more = "..." if len(value) > limit else ""
    if cut.isascii() and cut.decode().isprintable():
        return f"{cut.decode()!r}{more}"
    return f"0x{cut.hex()}{more}"


def _show_ns(ns: int) -> str:
    """Seconds with nanoseconds, as a PAX mtime writes them (``-1.5`` is a second and a half before 1970)."""
    seconds, frac = divmod(abs(ns), 1_000_000_000)
    return f"{'-' if ns < 0 else ''}{seconds}.{frac:09d}"
