"""Typed errors raised by the decoder.

Everything below the FUSE and command-line edges raises one of these; the
edges map them to errno values or exit codes exactly once.
"""

from __future__ import annotations

import errno


class ErofsError(Exception):
    """Base class of every error the library raises on purpose.

    ``answer`` marks errors that are ordinary replies (no such name, no such
    attribute) rather than failures worth logging.
    """

    errno = errno.EIO
    answer = False


class CorruptImage(ErofsError):
    """The image contradicts the EROFS format.

    ``nid`` names the inode involved (when there is one) so that a log line
    can point at it; ``where`` adds a position such as a logical offset.
    """

    def __init__(self, message: str, nid: int | None = None, where: str | None = None):
        self.nid = nid
        self.where = where
        self.detail = message
        parts = []
        if nid is not None:
            parts.append(f"nid {nid}")
        if where:
            parts.append(where)
        super().__init__(f"{message} ({', '.join(parts)})" if parts else message)

    def at(self, nid: int | None = None, where: str | None = None) -> CorruptImage:
        """Return a copy that names the inode/position, keeping the first ones set."""
        return CorruptImage(self.detail, self.nid if self.nid is not None else nid, self.where or where)


class UnsupportedFeature(ErofsError):
    """The image uses something this reader (deliberately) does not handle."""

    errno = errno.EOPNOTSUPP


class DeviceError(ErofsError):
    """The devices given do not fit the image (count, size, unreadable file)."""


class IntegrityError(CorruptImage):
    """Bytes read do not match the hash tree they are checked against (or the tree its root hash).

    Served like corruption (EIO), and named like it: ``at`` adds the inode
    whose read met the bad block. ``path`` is the data file, ``block`` the
    data block being read and ``offset`` the byte of ``path`` where it starts
    (both ``None`` when no data block is involved, as for a wrong root hash),
    so that a log line can name the files that use those bytes.
    """

    def __init__(self, message: str, path: str, block: int | None = None, offset: int | None = None,
                 nid: int | None = None, where: str | None = None):
        self.path = path
        self.block = block
        self.offset = offset
        super().__init__(message, nid, where)

    def at(self, nid: int | None = None, where: str | None = None) -> IntegrityError:
        return IntegrityError(self.detail, self.path, self.block, self.offset,
                              self.nid if self.nid is not None else nid, self.where or where)


class PathNotFound(ErofsError):
    errno = errno.ENOENT
    answer = True


class NotADirectory(ErofsError):
    errno = errno.ENOTDIR
    answer = True


class NoSuchAttribute(ErofsError):
    errno = errno.ENODATA
    answer = True
