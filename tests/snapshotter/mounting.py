"""Mounting what a snapshotter returns, the way containerd's mount.All does on Linux.

* ``bind`` with ``rbind``/``bind``, then a read-only remount for ``ro``;
* ``overlay`` with the options as data. Options longer than a page (128 layers of absolute paths) are
  mounted by the project's mount helper one option at a time; containerd mounts them from the lowerdirs'
  common parent with relative paths instead, which shows the same tree.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from erofsfuse.host.mountinfo import MountInfo, mount_table
from erofsfuse.host.mounting import MS_BIND, MS_RDONLY, MS_REC, MS_REMOUNT, MountError, mount, unmount


def mount_one(kind: str, source: str, options: Sequence[str], target: Path) -> None:
    options = list(options)
    if kind == "bind":
        flags = MS_BIND | (MS_REC if "rbind" in options else 0)
        mount(source, target, "none", flags)
        if "ro" in options:
            mount("none", target, "none", flags | MS_REMOUNT | MS_RDONLY)
        return
    flags = MS_RDONLY if "ro" in options else 0
    mount(source, target, kind, flags, [o for o in options if o not in ("ro", "rw")])


def mount_all(mounts: Sequence, target: Path) -> None:
    """Mount containerd.types.Mount messages (or anything with type/source/options) on ``target``."""
    for m in mounts:
        mount_one(m.type, m.source, m.options, target)


def unmount_all(target: Path) -> None:
    """Unmount everything stacked on ``target``."""
    with contextlib.suppress(MountError):
        while True:
            unmount(target)


def mounts_below(base: Path) -> list[MountInfo]:
    """The mounts at or below ``base``, in mount order (a later one may be stacked on an earlier one)."""
    return [m for m in mount_table() if m.target == base or base in m.target.parents]


def unmount_below(base: Path) -> None:
    """Detach every mount at or below ``base`` (deepest first): test teardown never deletes through a mount."""
    targets = {m.target for m in mounts_below(base)}
    for target in sorted(targets, key=lambda t: len(str(t)), reverse=True):
        unmount_all(target)
