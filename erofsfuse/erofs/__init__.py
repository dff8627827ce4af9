"""The EROFS library: the on-disk format, image access and decompression.

Nothing here imports pyfuse3 or trio; ``ErofsImage`` is the interface the FUSE
server, ``erofstool`` and the snapshotter are built on.
"""

from .data import CompressedExtent, Extent, MapFlag, Placement, PlainExtent
from .dirs import DirEntry
from .errors import (
    CorruptImage,
    DeviceError,
    ErofsError,
    NoSuchAttribute,
    NotADirectory,
    PathNotFound,
    UnsupportedFeature,
)
from .image import ErofsImage, StatResult
from .inode import Inode
from .superblock import CompressionConfig, Superblock

__all__ = [
    "CompressedExtent",
    "CompressionConfig",
    "CorruptImage",
    "DeviceError",
    "DirEntry",
    "ErofsError",
    "ErofsImage",
    "Extent",
    "Inode",
    "MapFlag",
    "NoSuchAttribute",
    "NotADirectory",
    "PathNotFound",
    "Placement",
    "PlainExtent",
    "StatResult",
    "Superblock",
    "UnsupportedFeature",
]
