"""Flattening a committed chain: one metadata-only EROFS image ("fsmeta") for all of its layers.

The fsmeta holds the chain's merged tree exactly as overlayfs shows the layers stacked (whiteouts and
opaque directories applied, overlay's private xattrs hidden; the merge is the FUSE stack's ``StackTree``),
and each regular file refers to its data where it already is: in the file that holds the data of the
layer providing it (the layer image, or its blob), which is extra device ``i + 1`` of the fsmeta for layer
``i`` (bottom first). Mounted as ``erofs -o device=DATA1,device=DATA2,... FSMETA``, it replaces one mount
per layer and an overlay of them with a single mount.

A file can only be referenced where its data lies in whole blocks of a file: uncompressed, outside the
metadata. mkfs.erofs makes such layers with ``-Enoinline_data`` (``MKFS_OPTIONS``: each file's data in
consecutive blocks of the image, so one chunk reference covers it) or with ``--chunksize=4096``
(chunk-based files, also with ``--blobdev``; the fsmeta then needs a reference per chunk). By default
mkfs.erofs keeps the tail of each file inline in the metadata, and compressed data cannot be referenced
either: a chain with such a layer is refused with ``NotFlattenable`` and keeps its per-layer mounts.
"""

from __future__ import annotations

import contextlib
import gc
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from erofsfuse.erofs.data import Placement
from erofsfuse.erofs.devices import BackingFile
from erofsfuse.erofs.image import ErofsImage
from erofsfuse.erofs.inode import Inode
from erofsfuse.erofs.writer import ChunkRef, Chunks, Device, InodeSpec, write_image
from erofsfuse.fuse.stack import StackTree, open_layers
from erofsfuse.fuse.stackfile import StackFile
from erofsfuse.fuse.tree import Node

from .errors import SnapshotterError

# mkfs.erofs (1.5 and later) options that make a layer whose files an fsmeta can refer to
MKFS_OPTIONS = ("-Enoinline_data",)


class NotFlattenable(SnapshotterError):
    """A layer holds a file whose data an fsmeta cannot refer to (compressed, or partly inline in the
    metadata): the chain is served layer by layer instead."""

    def __init__(self, layer: int, path: bytes, reason: str):
        self.layer = layer
        self.path = path
        super().__init__(f"layer {layer} cannot be flattened: {os.fsdecode(path)}: {reason}")


@dataclass(frozen=True)
class Fsmeta:
    """A written fsmeta: its extra devices (the files to give as ``device=``, in order) and what it holds."""

    devices: list[str]
    inodes: int
    files: int  # regular files referring to layer data
    size: int


class _Run:
    """Bytes ``[start, end)`` of a file that lie back to back at ``pos`` of its layer's data file (None: a hole)."""

    __slots__ = ("start", "end", "pos")

    def __init__(self, start: int, end: int, pos: int | None):
        self.start = start
        self.end = end
        self.pos = pos

    def continued_by(self, start: int, pos: int | None) -> bool:
        """Whether bytes from ``start`` stored at ``pos`` extend this run."""
        if start != self.end:
            return False
        if pos is None or self.pos is None:
            return pos is None and self.pos is None
        return pos == self.pos + (start - self.start)


class _Flattener:
    def __init__(self, layers: Sequence[ErofsImage]):
        self.layers = list(layers)
        self.tree = StackTree(self.layers)
        self.layer_of = {id(img): i for i, img in enumerate(self.layers)}
        self.block_size = self.layers[0].sb.block_size
        self.blkszbits = self.layers[0].sb.blkszbits
        for i, img in enumerate(self.layers):
            if img.sb.block_size != self.block_size:
                raise NotFlattenable(i, b"/", f"blocks of {img.sb.block_size} bytes, the bottom layer's are "
                                              f"{self.block_size}")
        self.data_files: list[BackingFile | None] = [None] * len(self.layers)
        self.files = 0

    def merged_tree(self) -> InodeSpec:
        """The stack's tree as ``InodeSpec``s; every name of one layer inode leads to one spec (hard links)."""
        tree = self.tree
        root = self._spec(tree.root, b"/")
        by_ino: dict[int, InodeSpec] = {}
        pending = [(tree.root, root, b"")]
        while pending:
            node, spec, path = pending.pop()
            for name, child, _ in tree.entries(node, 0):
                if name in (b".", b".."):
                    continue
                child_path = path + b"/" + name
                if stat.S_ISDIR(child.inode.mode):
                    child_spec = self._spec(child, child_path)
                    pending.append((child, child_spec, child_path))
                else:
                    child_spec = by_ino.get(child.ino)
                    if child_spec is None:
                        child_spec = by_ino[child.ino] = self._spec(child, child_path)
                spec.children[name] = child_spec
        return root

    def devices(self) -> tuple[list[str], list[Device]]:
        """Each layer's data file (the layer image itself when none of its files was referenced)."""
        paths, devices = [], []
        for img, data_file in zip(self.layers, self.data_files, strict=True):
            if data_file is None:
                data_file = img.devices.primary
            length = data_file.base + data_file.size
            paths.append(data_file.path)
            devices.append(Device((length + self.block_size - 1) >> self.blkszbits))
        return paths, devices

    def _spec(self, node: Node, path: bytes) -> InodeSpec:
        st = self.tree.stat(node)
        spec = InodeSpec(mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns, nlink=st.st_nlink,
                         xattrs=self.tree.xattrs(node), rdev=(st.st_rdev_major, st.st_rdev_minor))
        if stat.S_ISLNK(st.st_mode):
            spec.data = self.tree.readlink(node)
        elif stat.S_ISREG(st.st_mode) and st.st_size:
            img, ino = node.parts[0]
            spec.data = self._chunks(self.layer_of[id(img)], img, ino, path)
            self.files += 1
        return spec

    def _chunks(self, layer: int, img: ErofsImage, ino: Inode, path: bytes) -> Chunks:
        """References to the file's data in its layer: chunks as large as its runs of blocks allow."""
        if ino.compressed:
            raise NotFlattenable(layer, path, "compressed")
        runs = self._runs(layer, img, ino, path)
        size = ino.size
        chunk_bits = min(max(self.blkszbits, (size - 1).bit_length()), self.blkszbits + 31)
        for run in runs[1:]:  # a chunk cannot straddle two runs: every run starts a chunk
            chunk_bits = min(chunk_bits, (run.start & -run.start).bit_length() - 1)
        if chunk_bits < self.blkszbits:
            raise NotFlattenable(layer, path, "data not in whole blocks")
        chunk = 1 << chunk_bits
        refs: list[ChunkRef | None] = []
        for run in runs:
            for start in range(run.start, min(run.end, size), chunk):
                refs.append(None if run.pos is None else
                            ChunkRef(layer + 1, (run.pos + start - run.start) >> self.blkszbits))
        return Chunks(size, chunk_bits, refs)

    def _runs(self, layer: int, img: ErofsImage, ino: Inode, path: bytes) -> list[_Run]:
        """The file's extents, those that continue each other merged."""
        runs: list[_Run] = []
        for ext in img.extents(ino):
            if ext.placement is Placement.HOLE:
                pos = None
            elif ext.placement is Placement.DEVICE:
                data_file, offset = img.devices.locate(ext.pa, ext.device_id)
                bound = self.data_files[layer]
                if bound is None:
                    self.data_files[layer] = data_file
                elif bound is not data_file:
                    raise NotFlattenable(layer, path, f"data in {bound.path} and in {data_file.path}")
                pos = data_file.base + offset
                if pos & (self.block_size - 1):
                    raise NotFlattenable(layer, path, f"data at {pos}, not at a block boundary")
            else:
                raise NotFlattenable(layer, path, "data inline in the metadata")
            if runs and runs[-1].continued_by(ext.la, pos):
                runs[-1].end = ext.la + ext.llen
            else:
                runs.append(_Run(ext.la, ext.la + ext.llen, pos))
        return runs


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The merged tree is one object per inode and more, none of them garbage: without a pause the cyclic
    collector scans them all again and again while they are made (half the build time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def build_fsmeta(stack: StackFile, output: str | os.PathLike[str]) -> Fsmeta:
    """Write the fsmeta of the chain of layers ``stack`` describes (bottom first) to ``output``.

    Raises ``NotFlattenable`` (before writing anything) when a layer's file cannot be referenced.
    """
    with _collector_paused():
        images = open_layers(stack)
        try:
            flattener = _Flattener(images)
            root = flattener.merged_tree()
            paths, devices = flattener.devices()
            with open(output, "wb") as f:
                written = write_image(root, f, devices=devices, block_size=flattener.block_size)
        finally:
            for img in images:
                img.close()
    return Fsmeta(paths, written.inodes, flattener.files, written.size)
