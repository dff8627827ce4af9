"""A userspace EROFS reader: library, FUSE server and image tool.

The package is layered: ``erofsfuse.erofs`` is the library (the on-disk format,
image access and decompression; no FUSE), ``erofsfuse.fuse`` serves a tree of
images through pyfuse3 and trio, ``erofsfuse.host`` wraps what the host kernel
offers (its mount table, mount calls) and ``erofsfuse.cli`` holds the commands.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("erofsfuse")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "unknown"
