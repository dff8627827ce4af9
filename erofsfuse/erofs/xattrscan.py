"""Whether any inode of an image has an extended attribute a reader can see, found by reading every inode once.

A FUSE server that knows its tree has no xattrs can say so to the kernel once, instead of answering "no such
attribute" for every lookup and every ``ls -l``. No superblock field tells (inline xattrs need no shared area,
and a shared area or a prefix table may go unused), so every inode reachable from the root is looked at:
those without an xattr area are passed over at the cost of decoding the inode, the others have their names
read. Directories are entered in the order they are found (breadth first), the order in which mkfs.erofs
lays inodes out, so that metadata is read mostly forward: over twice as fast as depth first on an image of
/usr. The search is bounded on hostile images: each directory is entered once and one met again (a loop,
or a hard-linked directory, which mkfs.erofs never writes) is corruption, and past ``max_inodes`` inodes
or ``max_directories`` directories (their nids are what it keeps in memory) the search gives up
(``SearchLimit``). Whoever asked must then assume the image has xattrs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from .errors import CorruptImage, ErofsError
from .image import ErofsImage
from .inode import Inode

# Far more than a container image or a distribution holds (/usr of a desktop is about 200,000 inodes); at a
# few microseconds an inode the search ends within a minute however many directories an image claims.
MAX_INODES = 16_000_000
MAX_DIRECTORIES = 1_000_000  # /usr has about 15,000; a million nids kept is under 100 MiB


class SearchLimit(ErofsError):
    """The image has more inodes than the search is willing to look at."""


def every_name(name: bytes) -> bool:
    return True


class XattrSearch:
    """Looks through ``img`` for an inode with an xattr whose name ``shown`` accepts.

    ``steps()`` does the work ``BATCH`` inodes at a time, so that an event loop can answer requests in
    between; ``run()`` does it all at once. Then ``found`` is the nid of the first such inode (None: no
    inode has one) and ``inodes`` how many inodes were looked at. Errors are the library's typed ones.
    """

    BATCH = 512  # a few milliseconds

    def __init__(self, img: ErofsImage, shown: Callable[[bytes], bool] = every_name, max_inodes: int = MAX_INODES,
                 max_directories: int = MAX_DIRECTORIES):
        self.img = img
        self.shown = shown
        self.max_inodes = max_inodes
        self.max_directories = max_directories
        self.found: int | None = None
        self.inodes = 0

    def _has_shown(self, ino: Inode) -> bool:
        return bool(ino.xattr_isize) and any(self.shown(name) for name, _ in self.img.xattrs(ino))

    def steps(self) -> Iterator[int]:
        """Search, yielding the number of inodes looked at after every batch; stops at the first find."""
        img, root = self.img, self.img.root
        self.inodes = 1
        if self._has_shown(root):
            self.found = root.nid
            return
        entered = {root.nid}
        pending = deque([root.nid])
        limit = self.max_inodes + 1
        pause = min(self.BATCH, limit)
        while pending:
            for entry in img.entries(img.inode(pending.popleft())):
                self.inodes += 1
                if self.inodes >= pause:
                    if self.inodes >= limit:
                        raise SearchLimit(f"more than {self.max_inodes} inodes")
                    pause = min(pause + self.BATCH, limit)
                    yield self.inodes
                ino = img.inode(entry.nid)
                if ino.xattr_isize and self._has_shown(ino):
                    self.found = ino.nid
                    return
                if ino.is_dir:
                    if ino.nid in entered:
                        raise CorruptImage("directory reached twice: a directory loop or a hard-linked directory",
                                           ino.nid)
                    if len(entered) >= self.max_directories:
                        raise SearchLimit(f"more than {self.max_directories} directories")
                    entered.add(ino.nid)
                    pending.append(ino.nid)

    def run(self) -> int | None:
        """Search to the end; returns ``found``."""
        for _ in self.steps():
            pass
        return self.found
