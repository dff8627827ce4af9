"""Copy a tree out of an image into a directory, keeping everything the kernel shows.

Types, permission bits (setuid, setgid, sticky, 000), owners, nanosecond
mtimes, device numbers, hard links and every xattr are reproduced. The order
of the metadata calls is what keeps them: owner before mode (chown clears
setuid/setgid), xattrs before mode (an ACL rewrites the group bits; chmod
then puts the image's mode back), the mtime last, and a directory's mtime
only after all its contents exist. Regular files are written a chunk at a
time, so memory stays bounded; holes, and all-zero stretches, are left as holes.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator

from ..erofs.errors import CorruptImage, ErofsError
from ..erofs.image import ErofsImage
from ..erofs.inode import Inode
from ..erofs.stream import chunks
from .progress import Progress

HOLE_GRAIN = 4096  # the usual page and block size of the destination


class ExtractError(ErofsError):
    """Extraction stopped at ``path`` because the image is corrupt or unsupported there (the cause is chained)."""

    def __init__(self, path: bytes, cause: ErofsError):
        self.path = path
        self.errno = cause.errno
        super().__init__(f"{_show(path)}: {cause}")


def extract(img: ErofsImage, dest: str | bytes, top: str | bytes = b"/",
            progress: Progress | None = None) -> int:
    """Make ``dest`` a copy of ``top`` (default: the whole image); returns the number of paths made.

    ``dest`` must not exist yet, or, when ``top`` is a directory, be an
    empty directory.
    """
    root = os.fsencode(dest).rstrip(b"/") or b"/"
    top_b = os.fsencode(top)
    count = 0
    links: dict[int, bytes] = {}
    dirs: list[tuple[bytes, bytes, Inode]] = []
    seen_dirs: set[int] = set()
    for path, rel, ino in _walk_relative(img, top_b):
        target = root + rel
        count += 1
        try:
            if ino.is_dir:
                if ino.nid in seen_dirs:
                    raise CorruptImage("directory is reachable by more than one path", ino.nid)
                seen_dirs.add(ino.nid)
                _make_dir(target, top_level=not rel)
                dirs.append((path, target, ino))
            elif ino.nid in links:
                os.link(links[ino.nid], target, follow_symlinks=False)
                continue
            else:
                _create(img, target, ino)
                _finish(img, target, ino)
                if ino.nlink > 1:
                    links[ino.nid] = target
        except ErofsError as exc:
            raise ExtractError(path, exc) from exc
        if progress is not None:
            progress.advance()
    # reversed pre-order puts every directory after all of its descendants
    for path, target, ino in reversed(dirs):
        try:
            _finish(img, target, ino)
        except ErofsError as exc:
            raise ExtractError(path, exc) from exc
    return count


def _walk_relative(img: ErofsImage, top: bytes) -> Iterator[tuple[bytes, bytes, Inode]]:
    """``img.walk(top)`` as ``(path in the image, path relative to top, inode)``; ``top`` itself is ``b""``."""
    walk = img.walk(top)
    path, start = next(walk)
    yield path, b"", start
    prefix = b"/" + top.strip(b"/") if top.strip(b"/") else b""
    for path, ino in walk:
        yield path, path[len(prefix):], ino


def _make_dir(target: bytes, top_level: bool) -> None:
    if not top_level:
        os.mkdir(target, 0o700)
        return
    try:
        os.mkdir(target, 0o700)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(target).st_mode) or os.listdir(target):
            raise OSError(errno.EEXIST, "exists and is not an empty directory", os.fsdecode(target)) from None


def _create(img: ErofsImage, target: bytes, ino: Inode) -> None:
    """Create the non-directory ``target`` with ``ino``'s type and contents."""
    kind = stat.S_IFMT(ino.mode)
    if kind == stat.S_IFREG:
        _write_file(img, target, ino)
    elif kind == stat.S_IFLNK:
        os.symlink(img.readlink(ino), target)
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        os.mknod(target, kind | 0o600, os.makedev(*ino.rdev_pair))
    else:  # fifo or socket: mknod makes both, and a socket path may exceed sun_path's 108 bytes
        os.mknod(target, kind | 0o600)


def _write_file(img: ErofsImage, target: bytes, ino: Inode) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        for offset, data in chunks(img, ino, skip_holes=True):
            for start, end in _data_runs(data):
                _pwrite_all(fd, memoryview(data)[start:end], offset + start)
        os.ftruncate(fd, ino.size)
    finally:
        os.close(fd)


def _data_runs(data: bytes) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of the stretches of ``data`` that are not all-zero grains."""
    run = None
    for start in range(0, len(data), HOLE_GRAIN):
        piece = data[start : start + HOLE_GRAIN]
        if piece.count(0) == len(piece):
            if run is not None:
                yield run, start
                run = None
        elif run is None:
            run = start
    if run is not None:
        yield run, len(data)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done


def _finish(img: ErofsImage, target: bytes, ino: Inode) -> None:
    """Owner, xattrs, mode and mtime, in the order that keeps each of them."""
    os.chown(target, ino.uid, ino.gid, follow_symlinks=False)
    for name, value in img.xattrs(ino):
        os.setxattr(target, name, value, follow_symlinks=False)
    if not ino.is_symlink:
        os.chmod(target, stat.S_IMODE(ino.mode))
    os.utime(target, ns=(ino.mtime_ns, ino.mtime_ns), follow_symlinks=False)


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")
