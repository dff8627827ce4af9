"""Several images served as one tree with overlayfs semantics (read-only lower layers).

Rules, as the kernel's overlayfs applies them to a stack of lower layers:

* a name is looked up from the top layer down; a whiteout (0:0 character
  device) ends the search with "not found", a non-directory ends it with
  that file, a directory is merged with the same-named directories below
  until one of them is opaque (``trusted.overlay.opaque`` or
  ``user.overlay.opaque`` set to ``y``) or a lower layer has a non-directory;
* a merged directory lists every name once, from its topmost layer, hides
  whiteouts, and orders entries like overlayfs: the names in the lowest
  layer first, then the rest in top-down layer order; it reports nlink 1;
* overlay private xattrs (``trusted.overlay.*``, ``user.overlay.*``) are
  never shown. Redirect and metacopy xattrs, which container layers do not
  use, are not interpreted: such files are served as stored.

The layers come from a stack file (``stackfile``).
"""

from __future__ import annotations

from collections.abc import Iterator

from ..erofs.cache import SizedLRU
from ..erofs.errors import CorruptImage, NoSuchAttribute
from ..erofs.image import ErofsImage
from ..erofs.inode import Inode
from ..erofs.overlay import OPAQUE_XATTRS, is_whiteout
from .stackfile import StackFile
from .tree import LAYER_SHIFT, METABOX_BIT, ROOT_INO, FsStats, Layer, Node, Tree, image_stats

PRIVATE_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")


def open_layers(stack: StackFile, **cache) -> list[ErofsImage]:
    """The images of a stack's layers, bottom first (all closed again if one cannot be opened)."""
    images: list[ErofsImage] = []
    try:
        for layer in stack.layers:
            images.append(ErofsImage(layer.image, layer.devices, layer.offset, verity=layer.verity,
                                      device_verity=layer.device_verity, **cache))
    except BaseException:
        for img in images:
            img.close()
        raise
    return images


def path_in_image(img: ErofsImage, directory: Inode) -> list[bytes]:
    """Names from the image root down to ``directory``, found through ".." entries."""
    names: list[bytes] = []
    while directory.nid != img.root_nid:
        parent = img.lookup(directory, b"..")
        if parent is None or len(names) > 4096:
            raise CorruptImage("directory without a usable '..' entry", directory.nid)
        name = next((e.name for e in img.entries(parent) if e.nid == directory.nid), None)
        if name is None:
            raise CorruptImage("directory is not listed in its parent", directory.nid)
        names.append(name)
        directory = parent
    names.reverse()
    return names


class StackTree(Tree):
    """Layers (bottom first) merged into one read-only tree."""

    def __init__(self, layers: list[ErofsImage], xattrs: list[bool | None] | None = None):
        """``xattrs`` says for each layer whether it has xattrs the stack shows, where the stack file knows."""
        self.layers = layers
        self._layer_xattrs = list(xattrs) if xattrs is not None else [None] * len(layers)
        self._index = {id(img): i for i, img in enumerate(layers)}
        self._opaque: dict[tuple[int, int], bool] = {}
        self._listings: SizedLRU[list[tuple[bytes, ErofsImage, int]]] = SizedLRU(1 << 20)
        self.root = Node(ROOT_INO, tuple(Layer(img, img.root) for img in reversed(layers)))

    def images(self) -> list[ErofsImage]:
        return list(self.layers)

    # -- identity ------------------------------------------------------------
    def _node(self, parts: tuple[Layer, ...]) -> Node:
        img, ino = parts[0]
        layer = self._index[id(img)]
        return Node(((ino.nid & ~METABOX_BIT) + 2 + (layer << LAYER_SHIFT)) | (ino.nid & METABOX_BIT), parts)

    def node_by_ino(self, ino: int) -> Node:
        if ino == ROOT_INO:
            return self.root
        rest = ino & ~METABOX_BIT
        layer = rest >> LAYER_SHIFT
        if layer >= len(self.layers):
            raise CorruptImage(f"inode number {ino} names layer {layer} of {len(self.layers)}")
        img = self.layers[layer]
        inode = img.inode(((rest & ((1 << LAYER_SHIFT) - 1)) - 2) | (ino & METABOX_BIT))
        if not inode.is_dir:
            return self._node((Layer(img, inode),))
        # a merged directory is rebuilt from its path: walk up its layer by "..", then down the stack
        node = self.root
        for name in path_in_image(img, inode):
            child = self.lookup(node, name)
            if child is None:
                raise CorruptImage(f"directory {name!r} of inode number {ino} is not visible in the stack")
            node = child
        if node.ino != ino:
            raise CorruptImage(f"inode number {ino} is hidden by an upper layer")
        return node

    def _is_opaque(self, img: ErofsImage, ino: Inode) -> bool:
        key = (id(img), ino.nid)
        opaque = self._opaque.get(key)
        if opaque is None:
            opaque = any(name in OPAQUE_XATTRS and value == b"y" for name, value in img.xattrs(ino))
            self._opaque[key] = opaque
        return opaque

    # -- lookup ----------------------------------------------------------------
    def lookup(self, parent: Node, name: bytes) -> Node | None:
        if name in (b".", b".."):
            return None
        found: list[Layer] = []
        for img, dir_ino in parent.parts:
            child = img.lookup(dir_ino, name)
            if child is None:
                continue
            if is_whiteout(child):
                break
            if not child.is_dir:
                if not found:
                    found.append(Layer(img, child))
                break
            found.append(Layer(img, child))
            if self._is_opaque(img, child):
                break
        return self._node(tuple(found)) if found else None

    def _merged_names(self, node: Node) -> list[tuple[bytes, ErofsImage, int]]:
        """Names of a directory with the layer that provides each, in overlayfs order (whiteouts included).

        Like overlayfs, every name the lowest layer has comes first in that
        layer's order, then the other names in top-down layer order; each
        name is provided by its topmost layer.
        """
        cached = self._listings.get(node.ino)
        if cached is not None:
            return cached
        provider: dict[bytes, tuple[ErofsImage, int]] = {}
        for img, dir_ino in node.parts[:-1]:
            for entry in img.entries(dir_ino):
                provider.setdefault(entry.name, (img, entry.nid))
        upper_order = list(provider)
        img, dir_ino = node.parts[-1]
        lowest_order = []
        for entry in img.entries(dir_ino):
            provider.setdefault(entry.name, (img, entry.nid))
            lowest_order.append(entry.name)
        in_lowest = set(lowest_order)
        order = lowest_order + [name for name in upper_order if name not in in_lowest]
        return self._listings.put(node.ino, [(name, *provider[name]) for name in order])

    def entries(self, node: Node, start: int) -> Iterator[tuple[bytes, Node, int]]:
        # Positions: 1 and 2 are "." and ".."; name k of the merged list is k + 3.
        if start < 1:
            yield b".", node, 1
        if start < 2:
            yield b"..", node, 2
        names = self._merged_names(node)
        merged = len(node.parts) > 1
        for pos in range(max(start - 2, 0), len(names)):
            name, img, nid = names[pos]
            inode = img.inode(nid)
            if is_whiteout(inode):
                continue
            if merged and inode.is_dir:
                # the same name in the layers below may merge into it: the full lookup decides
                child = self.lookup(node, name)
                if child is None:
                    continue
            else:
                # the topmost layer with the name provides it, exactly as lookup() would find
                child = self._node((Layer(img, inode),))
            yield name, child, pos + 3

    # -- attributes --------------------------------------------------------------
    def nlink(self, node: Node) -> int:
        # overlayfs does not count the subdirectories of a merged directory
        return 1 if len(node.parts) > 1 else node.inode.nlink

    def xattrs(self, node: Node) -> list[tuple[bytes, bytes]]:
        return [(n, v) for n, v in super().xattrs(node) if self.shows_xattr(n)]

    def getxattr(self, node: Node, name: bytes) -> bytes:
        if not self.shows_xattr(name):
            raise NoSuchAttribute(name.decode("utf-8", "surrogateescape"))
        return super().getxattr(node, name)

    @staticmethod
    def shows_xattr(name: bytes) -> bool:
        """Overlayfs' private xattrs are the stack's to apply, never shown (a static rule: layers are judged
        by it before they are stacked)."""
        return not name.startswith(PRIVATE_XATTR_PREFIXES)

    def layer_xattrs(self) -> list[bool | None]:
        return list(self._layer_xattrs)

    def statfs(self) -> FsStats:
        # overlayfs reports the statistics of its topmost layer
        return image_stats(self.layers[-1])
