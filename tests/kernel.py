"""Kernel mounts used as the oracle: EROFS file-backed mounts and overlayfs."""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile

MS_RDONLY = 1
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: str, fstype: str, flags: int = 0, options: str = "") -> None:
    """mount(2) directly: with a regular file as source, EROFS mounts it file-backed."""
    rc = _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, options.encode() or None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount -t {fstype} {source} {target} -o {options}: {os.strerror(err)}")


def umount(target: str) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


@contextlib.contextmanager
def erofs_mount(image: str, devices: list[str] = ()):
    """Mount ``image`` read-only with the kernel's EROFS driver; yields the mountpoint."""
    with tempfile.TemporaryDirectory(prefix="kerofs-") as mnt:
        mount(image, mnt, "erofs", MS_RDONLY, ",".join(f"device={d}" for d in devices))
        try:
            yield mnt
        finally:
            umount(mnt)


@contextlib.contextmanager
def overlay_mount(lowerdirs: list[str]):
    """A read-only overlay of ``lowerdirs`` (bottom first); yields the mountpoint."""
    with tempfile.TemporaryDirectory(prefix="kovl-") as mnt:
        lower = ":".join(reversed(lowerdirs))
        mount("overlay", mnt, "overlay", MS_RDONLY, f"lowerdir={lower}")
        try:
            yield mnt
        finally:
            umount(mnt)
