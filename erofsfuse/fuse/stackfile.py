"""The stack file: the images one FUSE mount merges into a single tree, bottom layer first.

It is JSON: ``{"layers": [{"image": PATH, "devices": [PATH, ...], "offset": N, "xattrs": BOOL}, ...]}``,
where ``devices`` (the image's extra devices, in device-table order), ``offset`` (where the image starts
in its file) and ``xattrs`` (whether the layer holds extended attributes a reader can see, when the
writer knows it: the server then need not find out) may be left out and other keys are ignored.
Relative paths are relative to the stack file.
The snapshotter writes stack files and the server reads them, both through this module.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..erofs.errors import ErofsError


class StackFileError(ErofsError):
    """The stack file is missing, not JSON, or does not describe layers."""


@dataclass(frozen=True)
class StackLayer:
    """One image of a stack, opened as ``ErofsImage(image, devices, offset)``."""

    image: str
    devices: tuple[str, ...] = ()
    offset: int = 0
    xattrs: bool | None = None  # None: not known, the server scans the layer

    def to_document(self) -> dict:
        doc: dict = {"image": self.image}
        if self.devices:
            doc["devices"] = list(self.devices)
        if self.offset:
            doc["offset"] = self.offset
        if self.xattrs is not None:
            doc["xattrs"] = self.xattrs
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
        return cls(os.path.join(base, doc["image"]), tuple(os.path.join(base, p) for p in devices), offset, xattrs)


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
