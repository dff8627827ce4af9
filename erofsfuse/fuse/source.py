"""What a mount serves: one image, or the stack of images a stack file names."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..erofs.image import ErofsImage
from ..erofs.verity import VeritySpec
from .stack import StackTree, open_layers
from .stackfile import StackFile, is_stack_file
from .tree import ImageTree, Tree


def open_tree(source: str, devices: list[str] | tuple[str, ...] = (), offset: int = 0, *,
              verity: VeritySpec | None = None, device_verity: Sequence[VeritySpec | None] = (), **cache) -> Tree:
    """An ``ImageTree`` for an image (read through its hash trees when ``verity``/``device_verity`` say where
    they are), or a ``StackTree`` for a stack file."""
    if is_stack_file(source):
        if devices or offset or verity or any(device_verity):
            raise ValueError("devices, offsets and hash trees belong in the stack file's layers")
        stack = StackFile.load(source)
        return StackTree(open_layers(stack, **cache), [layer.xattrs for layer in stack.layers])
    return ImageTree(ErofsImage(os.fspath(source), list(devices), offset, verity=verity, device_verity=device_verity,
                                **cache))
