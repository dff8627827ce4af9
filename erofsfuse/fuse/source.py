"""What a mount serves: one image, or the stack of images a stack file names."""

from __future__ import annotations

import os

from ..erofs.image import ErofsImage
from .stack import StackTree, open_layers
from .stackfile import StackFile, is_stack_file
from .tree import ImageTree, Tree


def open_tree(source: str, devices: list[str] | tuple[str, ...] = (), offset: int = 0, **cache) -> Tree:
    """An ``ImageTree`` for an image, or a ``StackTree`` for a stack file."""
    if is_stack_file(source):
        if devices or offset:
            raise ValueError("--device and --offset belong in the stack file's layers")
        return StackTree(open_layers(StackFile.load(source), **cache))
    return ImageTree(ErofsImage(os.fspath(source), list(devices), offset, **cache))
