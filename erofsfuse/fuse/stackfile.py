"""The stack file: the images one FUSE mount merges into a single tree, bottom layer first.

It is JSON: ``{"layers": [{"image": PATH, "devices": [PATH, ...], "offset": N, "xattrs": BOOL,
"verity": VERITY}, ...]}``, where ``devices`` (the image's extra devices, in device-table order),
``offset`` (where the image starts in its file), ``xattrs`` (whether the layer holds extended
attributes a reader can see, when the writer knows it: the server then need not find out) and
``verity`` may be left out and other keys are ignored. ``xattrs`` is true when some inode reachable
from the layer's root has an xattr the stack shows, which is any but overlayfs' private ones
(``trusted.overlay.*``, ``user.overlay.*``: opaque markers and the like, which the stack applies and
hides), and false when none has (``erofsfuse.erofs.xattrscan`` with ``StackTree.shows_xattr`` finds out).
Only when every layer is false, said here or found by the server, is the kernel told that the tree has
no xattrs; a true layer whose xattrs an upper layer hides keeps exact answers, which costs requests but
is never wrong. ``verity`` serves the layer checked against
dm-verity hash trees: ``{"root_hash": HEX, "hash_file": PATH, "hash_offset": N, "devices": [TREE or
null, ...]}``, the image's tree (appended to it unless ``hash_file`` names one; ``hash_offset`` as
``erofstool verity format`` places it unless given) and those of its devices, in their order, each
``{"root_hash": ..., "hash_file": ..., "hash_offset": ...}`` (null for a device read as it is).
Relative paths are relative to the stack file.
The snapshotter writes stack files and the server reads them, both through this module.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..erofs.errors import ErofsError
from ..erofs.verity import VeritySpec, parse_root_hash


class StackFileError(ErofsError):
    """The stack file is missing, not JSON, or does not describe layers."""


@dataclass(frozen=True)
class StackLayer:
    """One image of a stack, opened as ``ErofsImage(image, devices, offset)``."""

    image: str
    devices: tuple[str, ...] = ()
    offset: int = 0
    xattrs: bool | None = None  # None: not known, the server scans the layer
    verity: VeritySpec | None = None  # the image's hash tree; None: read as it is
    device_verity: tuple[VeritySpec | None, ...] = ()  # the devices' trees, in device order

    def to_document(self) -> dict:
        doc: dict = {"image": self.image}
        if self.devices:
            doc["devices"] = list(self.devices)
        if self.offset:
            doc["offset"] = self.offset
        if self.xattrs is not None:
            doc["xattrs"] = self.xattrs
        if self.verity or any(self.device_verity):
            doc["verity"] = {**_tree_document(self.verity),
                             **({"devices": [_tree_document(spec) or None for spec in self.device_verity]}
                                if any(self.device_verity) else {})}
        return doc

    @classmethod
    def from_document(cls, doc: object, base: str = "") -> StackLayer:
        """The layer ``doc`` describes, its relative paths taken from directory ``base``."""
        if not isinstance(doc, dict) or not isinstance(doc.get("image"), str):
            raise StackFileError('no "image" path')
        devices = doc.get("devices", [])
        if not isinstance(devices, list) or not all(isinstance(p, str) for p in devices):
            raise StackFileError('"devices" must be a list of paths')
        offset = doc.get("offset", 0)
        if type(offset) is not int or offset < 0:
            raise StackFileError('"offset" must be a byte count')
        xattrs = doc.get("xattrs")
        if xattrs is not None and type(xattrs) is not bool:
            raise StackFileError('"xattrs" must be true or false')
        verity, device_verity = _layer_verity(doc["verity"], len(devices), base) if "verity" in doc else (None, ())
        return cls(os.path.join(base, doc["image"]), tuple(os.path.join(base, p) for p in devices), offset, xattrs,
                   verity, device_verity)


def _tree_document(spec: VeritySpec | None) -> dict:
    if spec is None:
        return {}
    doc: dict = {"root_hash": spec.root_hash.hex()}
    if spec.hash_path is not None:
        doc["hash_file"] = spec.hash_path
    if spec.hash_offset is not None:
        doc["hash_offset"] = spec.hash_offset
    return doc


def _layer_verity(doc: object, devices: int, base: str) -> tuple[VeritySpec | None, tuple[VeritySpec | None, ...]]:
    """The trees of a layer's ``"verity"`` object: the image's (if it has a root hash) and its devices'."""
    if not isinstance(doc, dict):
        raise StackFileError('"verity" must be an object')
    listed = doc.get("devices", [])
    if not isinstance(listed, list) or len(listed) > devices:
        raise StackFileError(f'"verity": "devices" must be a list of at most {devices} trees (one per device)')
    found = []
    for i, tree in enumerate(listed):
        if tree is not None and not isinstance(tree, dict):
            raise StackFileError(f'"verity": device {i + 1}: a tree is an object with a "root_hash", or null')
        found.append(None if tree is None else _tree(tree, base, f"device {i + 1}: "))
    own = _tree(doc, base, "") if doc.keys() & {"root_hash", "hash_file", "hash_offset"} else None
    if own is None and not any(found):
        raise StackFileError('"verity" names no tree: give "root_hash" (or trees in "devices")')
    return own, tuple(found)


def _tree(doc: dict, base: str, which: str) -> VeritySpec:
    root = doc.get("root_hash")
    if not isinstance(root, str):
        raise StackFileError(f'"verity": {which}no "root_hash"')
    try:
        root_hash = parse_root_hash(root)
    except ValueError as exc:
        raise StackFileError(f'"verity": {which}{exc}') from None
    path = doc.get("hash_file")
    if path is not None and not isinstance(path, str):
        raise StackFileError(f'"verity": {which}"hash_file" must be a path')
    offset = doc.get("hash_offset")
    if offset is not None and (type(offset) is not int or offset < 0):
        raise StackFileError(f'"verity": {which}"hash_offset" must be a byte count')
    return VeritySpec(root_hash, None if path is None else os.path.join(base, path), offset)


@dataclass(frozen=True)
class StackFile:
    """The layers of a stack, bottom first."""

    layers: tuple[StackLayer, ...]

    def to_document(self) -> dict:
        """The JSON document of this stack (what ``json.dump`` writes as the stack file)."""
        return {"layers": [layer.to_document() for layer in self.layers]}

    @classmethod
    def from_document(cls, doc: object, base: str = "") -> StackFile:
        """The stack a JSON document describes; relative paths are taken from directory ``base``."""
        layers = doc.get("layers") if isinstance(doc, dict) else None
        if not isinstance(layers, list) or not layers:
            raise StackFileError('expected {"layers": [{"image": ...}, ...]} with at least one layer')
        found = []
        for i, layer in enumerate(layers):
            try:
                found.append(StackLayer.from_document(layer, base))
            except StackFileError as exc:
                raise StackFileError(f"layer {i}: {exc}") from None
        return cls(tuple(found))

    @classmethod
    def load(cls, path: str) -> StackFile:
        """Read the stack file at ``path``."""
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as exc:
            raise StackFileError(f"cannot read stack file {path}: {exc}") from None
        try:
            return cls.from_document(doc, os.path.dirname(os.path.abspath(path)))
        except StackFileError as exc:
            raise StackFileError(f"{path}: {exc}") from None


def is_stack_file(path: str) -> bool:
    """A stack file is JSON text; an EROFS image starts with a binary boot area."""
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
    except OSError:
        return False
    return head.startswith(b"{")
