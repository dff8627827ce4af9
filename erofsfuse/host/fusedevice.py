"""Whether this process can make a FUSE mount, told before trying.

A refused FUSE mount says little (libfuse prints ``fuse: device not found``, fusermount3 exits 1), and
behind a daemon or a snapshotter the message ends up deep in a log. The usual reasons can be found in
advance: no FUSE in the kernel, ``/dev/fuse`` not open to this user (mode 0600 where no udev makes it
0666), and, for a process without CAP_SYS_ADMIN, whose mounts go through the setuid ``fusermount3``:
that helper missing, or ``allow_other`` asked without ``user_allow_other`` in ``/etc/fuse.conf``.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat

from .credentials import CAP_SYS_ADMIN, has_capability

DEVICE = "/dev/fuse"
FUSE_CONF = "/etc/fuse.conf"


def fuse_problem(*, allow_other: bool = False) -> str | None:
    """Why a FUSE mount (with ``allow_other`` if asked) cannot work for this process, or None if it can."""
    try:
        os.close(os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return f"{DEVICE} does not exist (is the fuse module loaded?)"
        if exc.errno in (errno.EACCES, errno.EPERM):
            mode = stat.S_IMODE(os.stat(DEVICE).st_mode)
            return f"{DEVICE} (mode {mode:04o}) is not open to this user; it needs mode 0666 for unprivileged mounts"
        if exc.errno in (errno.ENODEV, errno.ENXIO):
            return f"{DEVICE} has no driver: this kernel has no FUSE"
        return f"{DEVICE} cannot be opened: {exc.strerror}"
    if has_capability(CAP_SYS_ADMIN):
        return None  # mounts with mount(2) itself
    if not shutil.which("fusermount3"):
        return "mounting without CAP_SYS_ADMIN needs fusermount3 (Debian package fuse3), which is not installed"
    if allow_other and not user_allow_other():
        return f"allow_other needs user_allow_other in {FUSE_CONF} for mounts without CAP_SYS_ADMIN"
    return None


def user_allow_other() -> bool:
    """Whether fusermount3 lets users mount with ``allow_other``."""
    try:
        with open(FUSE_CONF) as f:
            return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in f)
    except OSError:
        return False
