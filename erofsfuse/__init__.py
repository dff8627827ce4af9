"""A userspace EROFS reader: library, FUSE daemon and image tool."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("erofsfuse")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "unknown"
