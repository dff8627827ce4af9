"""Kernel mounts: EROFS layers, the mount table, unmounting, and what this host allows.

The snapshotter mounts committed layers itself (containerd 1.6 and runc only know ``bind`` and
``overlay``) and unmounts them when no snapshot needs them. The mount table, not an in-memory list, is
the record of what is mounted, so a restarted snapshotter finds the mounts its predecessor left.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from erofsfuse.host import mounting
from erofsfuse.host.credentials import CAP_SYS_ADMIN, has_capability, in_user_namespace
from erofsfuse.host.mountinfo import MountInfo, mount_table

from .errors import MountError
from .planner import HostCapabilities

log = logging.getLogger(__name__)

def mount_erofs(blob: Path, target: Path, devices: Sequence[str] = ()) -> None:
    """Mount a layer blob (or an fsmeta with its extra ``devices``) read-only: file-backed where the kernel can
    (6.12+), else through loop devices; one ``device`` at a time when they do not fit in a page."""
    try:
        mounting.mount_erofs(blob, target, devices)
    except mounting.MountError as exc:
        what = f"fsmeta {blob} with {len(devices)} devices" if devices else f"layer {blob}"
        raise MountError(f"kernel refused {what}: {os.strerror(exc.errno)}") from exc


def unmount(target: Path) -> None:
    """Detach a mount; it goes away once nothing uses it (a FUSE daemon exits then)."""
    try:
        mounting.unmount(target)
    except mounting.MountError as exc:
        if exc.errno == errno.EINVAL:  # not a mount point (any more)
            return
        if exc.errno == errno.EPERM and shutil.which("fusermount3"):  # an unprivileged FUSE mount
            proc = subprocess.run(["fusermount3", "-u", "-z", str(target)], capture_output=True, text=True)
            if proc.returncode == 0:
                return
        raise MountError(f"cannot unmount {target}: {os.strerror(exc.errno)}") from exc


def mounts_under(base: Path) -> list[MountInfo]:
    """Mounts at or below ``base``, deepest first (the order to unmount them in)."""
    found = [m for m in mount_table() if m.target == base or base in m.target.parents]
    return sorted(found, key=lambda m: len(m.target.parts), reverse=True)


def remove_tree(path: Path) -> None:
    """Delete a directory tree, unmounting whatever is mounted inside it first (never delete through a mount)."""
    for entry in mounts_under(path):
        log.info("unmounting %s (%s) before deleting %s", entry.target, entry.fstype, path)
        unmount(entry.target)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


def _erofs_registered() -> bool:
    with open("/proc/filesystems") as f:
        return any(line.split()[-1:] == ["erofs"] for line in f)


def host_capabilities() -> HostCapabilities:
    erofs = _erofs_registered()
    if not erofs and shutil.which("modprobe"):
        subprocess.run(["modprobe", "-q", "erofs"], check=False, capture_output=True)  # a module loads on demand
        erofs = _erofs_registered()
    return HostCapabilities(erofs_in_kernel=erofs, privileged=has_capability(CAP_SYS_ADMIN),
                            in_user_namespace=in_user_namespace())
