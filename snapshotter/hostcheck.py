"""Startup checks: whether the configured mode can work on this host, found before anything is served.

Without them a mode that cannot work shows only when a Prepare first needs it, as an error deep inside an
image import. What decides it: the kernel mounts EROFS only for a process privileged in the initial user
namespace; erofsfuse daemons need FUSE open to this user (``/dev/fuse`` is 0600 where no udev makes it
0666, and its owner is nobody inside rootlesskit's user namespace).
"""

from __future__ import annotations

import logging
import shutil

from erofsfuse.host.fusedevice import fuse_problem

from .daemons import OPTIONS
from .planner import HostCapabilities, Mode

log = logging.getLogger(__name__)


class UnusableMode(Exception):
    """The configured mode cannot work on this host; the message says why."""


def fuse_blocker(erofsfuse: str | None) -> str | None:
    """Why the snapshotter's erofsfuse daemons cannot mount on this host, or None if they can."""
    if not erofsfuse:
        return "erofsfuse is not installed"
    if not shutil.which(erofsfuse):
        return f"{erofsfuse} is not an executable"
    return fuse_problem(allow_other="allow_other" in OPTIONS)


def check_mode(mode: Mode, host: HostCapabilities, erofsfuse: str | None) -> None:
    """Refuse a mode that cannot work here (``UnusableMode``); in auto mode, say once which mode is left when
    fuse mode cannot work (the snapshotter's first log line says so when the kernel cannot)."""
    kernel, fuse = host.kernel_blocker(), fuse_blocker(erofsfuse)
    if mode is Mode.FUSE and fuse:
        raise UnusableMode(f"fuse mode cannot work here: {fuse}")
    if mode is Mode.KERNEL and kernel:
        raise UnusableMode(f"kernel mode cannot work here: {kernel}")
    if mode is Mode.AUTO and kernel and fuse:
        raise UnusableMode(f"no mode can work here: not kernel mode ({kernel}), not fuse mode ({fuse})")
    if mode is Mode.AUTO and fuse:
        log.warning("fuse mode cannot work here (%s): auto mode mounts every layer with the kernel, and a layer "
                    "the kernel refuses cannot be used", fuse)
