"""The tree a FUSE mount serves: one image as it is, behind a small interface.

``Tree`` is what the FUSE adapter talks to; ``ImageTree`` shows a single
image exactly as the kernel's EROFS driver does, and ``stack.StackTree``
merges several images with overlayfs semantics behind the same interface.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from ..erofs import ondisk as d
from ..erofs.errors import CorruptImage
from ..erofs.image import ErofsImage, StatResult
from ..erofs.inode import Inode

ROOT_INO = 1
LAYER_SHIFT = 52  # stacks put the layer index above the nid in inode numbers
METABOX_BIT = 1 << d.DIRENT_NID_METABOX_BIT
INO_LIMIT = 1 << 64  # FUSE inode numbers are 64-bit


@dataclass(frozen=True)
class FsStats:
    block_size: int
    blocks: int
    files: int
    files_free: int
    name_max: int = d.NAME_LEN


class Layer(NamedTuple):
    """An inode of one image that a node of the served tree shows."""

    image: ErofsImage
    inode: Inode


class Node:
    """A file or directory of the served tree.

    ``parts`` holds the layers that provide it, topmost first: one for plain
    files and single images, several for directories merged across layers.
    The topmost one (``image``, ``inode``) gives the node its attributes and contents.
    """

    __slots__ = ("ino", "parts", "image", "inode")

    def __init__(self, ino: int, parts: tuple[Layer, ...]):
        self.ino = ino
        self.parts = parts
        self.image, self.inode = parts[0]

    def __repr__(self) -> str:
        return f"<Node ino={self.ino} {self.inode!r} layers={len(self.parts)}>"


class Tree:
    """Operations a FUSE mount needs; inode numbers are stable and derived from the images."""

    root: Node

    def lookup(self, parent: Node, name: bytes) -> Node | None:
        raise NotImplementedError

    def node_by_ino(self, ino: int) -> Node:
        """The node an inode number stands for, rebuilt from the images alone.

        Inode numbers encode where a node lives, so a daemon that never saw
        the lookup (it was restarted, or forgot the node) can still serve it.
        """
        raise NotImplementedError

    def entries(self, node: Node, start: int) -> Iterator[tuple[bytes, Node, int]]:
        """Children from listing position ``start``: (name, node, position after it)."""
        raise NotImplementedError

    def listing(self, node: Node, start: int) -> Iterator[tuple[bytes, int, int, int]]:
        """What a listing shows without attributes: (name, inode number, ``S_IFMT`` type, position after it)."""
        for name, child, position in self.entries(node, start):
            yield name, child.ino, stat.S_IFMT(child.inode.mode), position

    def stat(self, node: Node) -> StatResult:
        """What ``lstat`` shows for ``node``: its top inode under the node's own number and link count."""
        return StatResult.of(node.inode, node.ino, self.nlink(node))

    def nlink(self, node: Node) -> int:
        return node.inode.nlink

    def read(self, node: Node, offset: int, size: int) -> bytes:
        return node.image.read(node.inode, offset, size)

    def readlink(self, node: Node) -> bytes:
        return node.image.readlink(node.inode)

    def xattrs(self, node: Node) -> list[tuple[bytes, bytes]]:
        return node.image.xattrs(node.inode)

    def getxattr(self, node: Node, name: bytes) -> bytes:
        return node.image.getxattr(node.inode, name)

    def shows_xattr(self, name: bytes) -> bool:
        """Whether an xattr of this name, where an image has one, is shown."""
        return True

    def layer_xattrs(self) -> list[bool | None]:
        """For each of ``images()``, whether it has xattrs this tree shows, where that is known (else None)."""
        return [None] * len(self.images())

    def statfs(self) -> FsStats:
        raise NotImplementedError

    def images(self) -> list[ErofsImage]:
        raise NotImplementedError

    def close(self) -> None:
        for img in self.images():
            img.close()


def image_stats(img: ErofsImage) -> FsStats:
    """statfs as the kernel reports it: all blocks used, inode count from the superblock."""
    files = (1 << 64) - 1
    return FsStats(img.sb.block_size, img.total_blocks, files, files - img.sb.inos)


class ImageTree(Tree):
    """A single image, shown exactly as the kernel shows it (whiteouts included)."""

    def __init__(self, image: ErofsImage):
        self.image = image
        self.root = Node(ROOT_INO, (Layer(image, image.root),))
        self._root_nid = image.root_nid

    def images(self) -> list[ErofsImage]:
        return [self.image]

    def node(self, nid: int) -> Node:
        return self.root if nid == self._root_nid else self._node_of(self.image.inode(nid))

    def _node_of(self, ino: Inode) -> Node:
        return self.root if ino.nid == self._root_nid else Node(ino.nid + 2, (Layer(self.image, ino),))

    def node_by_ino(self, ino: int) -> Node:
        return self.root if ino == ROOT_INO else self.node(ino - 2)

    def lookup(self, parent: Node, name: bytes) -> Node | None:
        child = self.image.lookup(parent.inode, name)
        return None if child is None else self._node_of(child)

    def entries(self, node: Node, start: int) -> Iterator[tuple[bytes, Node, int]]:
        for name, ino, _, position in self.listing(node, start):
            yield name, node if name == b"." else self.node_by_ino(ino), position

    def listing(self, node: Node, start: int) -> Iterator[tuple[bytes, int, int, int]]:
        """Straight from the dirents, with the dirent's file type as the kernel shows it: no inode is read.

        The dirent at byte p is at position p + 2; a "." the image omits is listed last, as the kernel does.
        """
        modes = d.FILE_TYPE_MODES
        ino = node.inode
        own, root_nid = node.ino, self._root_nid
        for name, nid, file_type, offset in self.image.dirents(ino, max(start - 1, 0)):
            if name == b".":
                number = own
            elif nid == root_nid:
                number = ROOT_INO
            elif nid < INO_LIMIT - 2:
                number = nid + 2
            else:
                raise CorruptImage(f"dirent nid {nid} cannot be an inode number", ino.nid)
            yield name, number, modes.get(file_type, 0), offset + 2
        if ino.dot_omitted and start < ino.size + 2:
            yield b".", own, stat.S_IFDIR, ino.size + 2

    def statfs(self) -> FsStats:
        return image_stats(self.image)

