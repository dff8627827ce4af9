"""Check a whole image: every inode, directory block, xattr and data byte.

``ErofsImage.walk`` stops at the first error, which is right for a reader.
A checker must instead say everything that is wrong in one run, so this
module walks the tree itself: each problem is recorded with the path and
nid it was found at, and the walk goes on with the next entry or inode (a
directory is given up at its first unreadable block). On top of what
reading needs, it checks what the format promises but a reader never
relies on: sorted names without ``/`` or NUL (also across blocks), ``.``
and ``..`` pointing at the right inodes, dirent file types matching the
inodes, and no directory reachable twice. Holes are not read: a sparse
or corrupt size costs nothing.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..erofs import ondisk as d
from ..erofs.dirs import DirEntry
from ..erofs.errors import ErofsError
from ..erofs.image import ErofsImage
from ..erofs.inode import Inode
from ..erofs.stream import chunks
from .progress import Progress


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the image, where it was found."""

    path: bytes
    nid: int | None
    message: str

    def __str__(self) -> str:
        text = self.message
        if self.nid is not None and f"nid {self.nid}" not in text:
            text += f" (nid {self.nid})"
        return f"{self.path.decode('utf-8', 'backslashreplace')}: {text}"


@dataclass
class FsckReport:
    problems: list[Problem] = field(default_factory=list)
    inodes: int = 0
    entries: int = 0
    bytes: int = 0

    @property
    def clean(self) -> bool:
        return not self.problems


class Checker:
    """One check of one image; ``on_problem`` hears of each problem as soon as it is found."""

    def __init__(self, img: ErofsImage, on_problem: Callable[[Problem], None] | None = None,
                 progress: Progress | None = None):
        self.img = img
        self.on_problem = on_problem
        self.progress = progress
        self.report = FsckReport()
        self._seen: set[int] = set()

    def problem(self, path: bytes, nid: int | None, error: ErofsError | str) -> None:
        found = Problem(path, nid, str(error))
        self.report.problems.append(found)
        if self.on_problem is not None:
            self.on_problem(found)

    def run(self) -> FsckReport:
        img = self.img
        for label, nid in ((b"<metabox inode>", img.sb.metabox_nid), (b"<packed inode>", img.sb.packed_nid)):
            if nid:
                self._check_special(label, nid)
        root = img.root
        self._check_inode(b"/", root)
        self.report.entries += 1
        # depth first, in readdir order; ``active`` holds the directories on the current path
        stack: list[tuple[bytes, int, Iterator[DirEntry]]] = [(b"", root.nid, self._children(b"/", root, root.nid))]
        active = {root.nid}
        while stack:
            base, dir_nid, children = stack[-1]
            entry = next(children, None)
            if entry is None:
                stack.pop()
                active.discard(dir_nid)
                continue
            path = base + b"/" + entry.name
            self.report.entries += 1
            child = self._entry_inode(path, entry)
            if child is None or not child.is_dir:
                continue
            if child.nid in active:
                self.problem(path, child.nid, "directory loop: the directory is one of its own ancestors")
            elif child.nid in self._seen:
                self.problem(path, child.nid, "directory is reachable by more than one path")
            else:
                self._check_inode(path, child)
                stack.append((path, child.nid, self._children(path, child, dir_nid)))
                active.add(child.nid)
        return self.report

    # -- one entry, one inode ---------------------------------------------------
    def _entry_inode(self, path: bytes, entry: DirEntry) -> Inode | None:
        """The inode a dirent names, checked once per inode; None when it cannot be decoded."""
        try:
            child = self.img.inode(entry.nid)
        except ErofsError as exc:
            self.problem(path, entry.nid, exc)
            return None
        expected = d.FILE_TYPES.get(stat.S_IFMT(child.mode))
        if entry.file_type != expected:
            self.problem(path, child.nid, f"dirent file type {entry.file_type} does not match the inode's ({expected})")
        if not child.is_dir and child.nid not in self._seen:
            self._check_inode(path, child)
        return child

    def _check_special(self, label: bytes, nid: int) -> None:
        """The packed or metabox inode: not in the tree, but file data and metadata live in it."""
        try:
            self._check_data(label, self.img.inode(nid))
        except ErofsError as exc:
            self.problem(label, nid, exc)

    def _check_inode(self, path: bytes, ino: Inode) -> None:
        """Check an inode of the tree, counting it once."""
        self._seen.add(ino.nid)
        self.report.inodes += 1
        if self.progress is not None:
            self.progress.advance()
        self._check_data(path, ino)

    def _check_data(self, path: bytes, ino: Inode) -> None:
        """Decode everything an inode holds except directory blocks (``_children`` reads those)."""
        img = self.img
        try:
            img.stat(ino)
            img.xattrs(ino)
            if ino.is_symlink:
                img.readlink(ino)
            elif ino.is_reg:
                for _, data in chunks(img, ino, skip_holes=True):  # a hole holds nothing to check
                    self.report.bytes += len(data)
        except ErofsError as exc:
            self.problem(path, ino.nid, exc)

    # -- directories ------------------------------------------------------------
    def _children(self, path: bytes, ino: Inode, parent_nid: int) -> Iterator[DirEntry]:
        """The entries of a directory other than ``.`` and ``..``, with every block checked."""
        try:
            nblocks = self.img.dirent_blocks(ino)
        except ErofsError as exc:
            self.problem(path, ino.nid, exc)
            return
        dots: dict[bytes, int] = {}
        last = b""
        damaged = False
        for index in range(nblocks):
            try:
                entries = self.img.dirent_block(ino, index)
            except ErofsError as exc:
                # give up on the rest: a corrupt size or mapping could make every one of billions of blocks fail
                self.problem(path, ino.nid, exc)
                damaged = True
                break
            if index and entries[0].name <= last:
                self.problem(path, ino.nid, f"directory block {index} starts with a name that sorts before block "
                             f"{index - 1} ends")
            last = entries[-1].name
            for entry in entries:
                if entry.name in (b".", b".."):
                    if entry.name in dots:
                        self.problem(path, ino.nid, f"more than one {entry.name.decode()!r} entry")
                    dots[entry.name] = entry.nid
                else:
                    yield entry
        for name, expected in ((b".", ino.nid), (b"..", parent_nid)):
            if name == b"." and ino.dot_omitted:
                continue
            if name not in dots:
                if not damaged:  # it may well be in the block that could not be read
                    self.problem(path, ino.nid, f"no {name.decode()!r} entry")
            elif dots[name] != expected:
                self.problem(path, ino.nid, f"{name.decode()!r} points to nid {dots[name]} instead of {expected}")


def check(img: ErofsImage, on_problem: Callable[[Problem], None] | None = None,
          progress: Progress | None = None) -> FsckReport:
    """Check all of ``img``; problems are returned (and, with ``on_problem``, reported as found)."""
    return Checker(img, on_problem, progress).run()
