"""Mounting what a snapshotter returns, the way containerd's mount.All does on Linux.

* ``bind`` with ``rbind``/``bind``, then a read-only remount for ``ro``;
* ``overlay`` with the options as data; when they do not fit in a page (128 layers of absolute paths),
  the mount is done from the lowerdirs' common parent with relative paths, as containerd does.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from erofsfuse.host.mountinfo import MountInfo, mount_table
from tests.kernel import MNT_DETACH, MS_RDONLY, _libc, mount, umount

MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _compact_overlay(options: list[str]) -> tuple[list[str], str | None]:
    """Overlay options with lowerdirs relative to their common parent, and that parent."""
    lower_index = next(i for i, o in enumerate(options) if o.startswith("lowerdir="))
    lowers = options[lower_index].removeprefix("lowerdir=").split(":")
    common = os.path.commonpath([os.path.dirname(p) for p in lowers])
    relative = [os.path.relpath(p, common) for p in lowers]
    return [*options[:lower_index], "lowerdir=" + ":".join(relative), *options[lower_index + 1:]], common


def mount_one(kind: str, source: str, options: Sequence[str], target: Path) -> None:
    options = list(options)
    if kind == "bind":
        flags = MS_BIND | (MS_REC if "rbind" in options else 0)
        mount(source, str(target), "none", flags)
        if "ro" in options:
            mount("none", str(target), "none", flags | MS_REMOUNT | MS_RDONLY)
        return
    flags = MS_RDONLY if "ro" in options else 0
    data = [o for o in options if o not in ("ro", "rw")]
    if kind == "overlay" and len(",".join(data)) >= PAGE_SIZE:
        data, cwd = _compact_overlay(data)
        cmd = ["mount", "-t", "overlay", "-o", ",".join(data + (["ro"] if flags else [])), source, str(target)]
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
        return
    mount(source, str(target), kind, flags, ",".join(data))


def mount_all(mounts: Sequence, target: Path) -> None:
    """Mount containerd.types.Mount messages (or anything with type/source/options) on ``target``."""
    for m in mounts:
        mount_one(m.type, m.source, m.options, target)


def unmount_all(target: Path) -> None:
    """Unmount everything stacked on ``target``."""
    while True:
        try:
            umount(str(target))
        except OSError:
            return


def mounts_below(base: Path) -> list[MountInfo]:
    """The mounts at or below ``base``, in mount order (a later one may be stacked on an earlier one)."""
    return [m for m in mount_table() if m.target == base or base in m.target.parents]


def unmount_below(base: Path) -> None:
    """Detach every mount at or below ``base`` (deepest first): test teardown never deletes through a mount."""
    targets = {str(m.target) for m in mounts_below(base)}
    for t in sorted(targets, key=len, reverse=True):
        while _libc.umount2(t.encode(), MNT_DETACH) == 0:  # mounts may be stacked
            pass
