"""Kernel mounts used as the oracle: EROFS (file-backed, or on loop devices where the kernel wants a block
device, as for images on tmpfs) and overlayfs, all made by the project's one mount helper."""

from __future__ import annotations

import contextlib
import tempfile

from erofsfuse.host.mounting import MNT_DETACH, MS_RDONLY, mount, mount_erofs
from erofsfuse.host.mounting import unmount as umount

__all__ = ["MNT_DETACH", "MS_RDONLY", "erofs_mount", "mount", "overlay_mount", "umount"]


@contextlib.contextmanager
def erofs_mount(image: str, devices: list[str] = ()):
    """Mount ``image`` read-only with the kernel's EROFS driver; yields the mountpoint."""
    with tempfile.TemporaryDirectory(prefix="kerofs-") as mnt:
        mount_erofs(image, mnt, devices)
        try:
            yield mnt
        finally:
            umount(mnt)


@contextlib.contextmanager
def overlay_mount(lowerdirs: list[str]):
    """A read-only overlay of ``lowerdirs`` (bottom first); yields the mountpoint."""
    with tempfile.TemporaryDirectory(prefix="kovl-") as mnt:
        mount("overlay", mnt, "overlay", MS_RDONLY, [f"lowerdir={':'.join(reversed(lowerdirs))}"])
        try:
            yield mnt
        finally:
            umount(mnt)
