"""Mounting and unmounting with system calls, the one way the project does it (never through mount(8)).

mount(8) is not the same program everywhere: util-linux 2.41 hands options to the kernel through the new
mount API, whose ``fsconfig`` takes no value of 256 bytes or more, so an overlay of a few dozen layers that
2.38 mounts is refused there. mount(2) takes all the options in one page, whatever their lengths; beyond a
page the new mount API is used directly, one option at a time, with an overlay's layers given one by one
(``lowerdir+``/``datadir+``, Linux 6.8+), so no single value is long.

The kernel mounts an EROFS image file directly only when it can read it through the page cache (Linux
6.12+, and not files on tmpfs, overlayfs or NFS: "Block device required"). Such an image is mounted through
read-only loop devices instead, which the kernel detaches by itself once the mount is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
from collections.abc import Iterator, Sequence
from typing import NoReturn

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MNT_DETACH = 0x2
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# <linux/mount.h>
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100
FSCONFIG_VALUE_MAX = 255  # the kernel copies at most 256 bytes of a value, its NUL included
# mount(2) flags that are per-mount attributes in the new API
_MOUNT_ATTRS = {MS_RDONLY: 0x1, MS_NOSUID: 0x2, MS_NODEV: 0x4, MS_NOEXEC: 0x8}

# <linux/loop.h>
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 0x1
LO_FLAGS_AUTOCLEAR = 0x4
LOOP_CONTROL = "/dev/loop-control"
LOOP_ATTEMPTS = 16  # another process may take the free device between asking for it and configuring it

_libc = ctypes.CDLL(None, use_errno=True)
_UNESCAPED_COMMA = re.compile(r"(?<!\\),")
_UNESCAPED_COLON = re.compile(r"(?<!\\):")
_ESCAPE = re.compile(r"\\(.)")


class MountError(OSError):
    """The kernel refused a mount or unmount; ``errno`` says why, the message what was asked (and the
    kernel's own explanation when it gave one)."""


class _LoopInfo64(ctypes.Structure):
    _fields_ = [("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64), ("lo_rdevice", ctypes.c_uint64),
                ("lo_offset", ctypes.c_uint64), ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
                ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
                ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_char * 64),
                ("lo_crypt_name", ctypes.c_char * 64), ("lo_encrypt_key", ctypes.c_char * 32),
                ("lo_init", ctypes.c_uint64 * 2)]


class _LoopConfig(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32), ("info", _LoopInfo64),
                ("reserved", ctypes.c_uint64 * 8)]


StrPath = str | os.PathLike[str]


def _raise(err: int, what: str, detail: str = "") -> NoReturn:
    raise MountError(err, f"{what}: {os.strerror(err)}" + (f" ({detail})" if detail else ""))


def option_list(options: str | Sequence[str]) -> list[str]:
    """Options as a list, from a list or from mount(2)'s comma-separated form (a ``\\,`` stays in its value)."""
    if isinstance(options, str):
        return [o for o in _UNESCAPED_COMMA.split(options) if o]
    return list(options)


def mount(source: StrPath, target: StrPath, fstype: str, flags: int = 0, options: str | Sequence[str] = ()) -> None:
    """Mount ``source`` on ``target``: mount(2) when the options fit in a page, else the new mount API."""
    listed = option_list(options)
    data = ",".join(listed)
    what = f"mount -t {fstype} {os.fsdecode(source)} {os.fsdecode(target)}"
    if data:
        what += f" -o {_shortened(data)}"
    encoded = os.fsencode(data)
    if len(encoded) < PAGE_SIZE:
        if _libc.mount(os.fsencode(source), os.fsencode(target), fstype.encode(), flags, encoded or None) != 0:
            _raise(ctypes.get_errno(), what)
        return
    _mount_option_by_option(source, target, fstype, flags, listed, what)


def _shortened(data: str, keep: int = 200) -> str:
    """Options for a message: the start of a long list and how long it is."""
    return data if len(data) <= keep else f"{data[:keep]}... ({len(data)} characters)"


def _mount_option_by_option(source: StrPath, target: StrPath, fstype: str, flags: int, options: list[str],
                            what: str) -> None:
    """fsopen, one fsconfig per option, fsmount, move_mount: no limit on the options' total length."""
    attrs = 0
    for flag, attr in _MOUNT_ATTRS.items():
        if flags & flag:
            attrs |= attr
            flags &= ~flag
    if flags:
        _raise(errno.EINVAL, what, f"flags {flags:#x} cannot be used with options longer than a page")
    fs_fd = _libc.fsopen(fstype.encode(), FSOPEN_CLOEXEC)
    if fs_fd < 0:
        _raise(ctypes.get_errno(), what)
    try:
        settings = [("source", os.fsdecode(source))] + [s for o in options for s in _settings(fstype, o)]
        if attrs & _MOUNT_ATTRS[MS_RDONLY]:
            settings.append(("ro", None))
        for key, value in settings:
            if value is not None and len(os.fsencode(value)) > FSCONFIG_VALUE_MAX:
                _raise(errno.EINVAL, what, f"the value of {key} is longer than the kernel takes")
            _fsconfig(fs_fd, FSCONFIG_SET_FLAG if value is None else FSCONFIG_SET_STRING, key, value, what)
        _fsconfig(fs_fd, FSCONFIG_CMD_CREATE, None, None, what)
        mount_fd = _libc.fsmount(fs_fd, FSMOUNT_CLOEXEC, attrs)
        if mount_fd < 0:
            _raise(ctypes.get_errno(), what, _context_messages(fs_fd))
        try:
            if _libc.move_mount(mount_fd, b"", AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH) != 0:
                _raise(ctypes.get_errno(), what)
        finally:
            os.close(mount_fd)
    finally:
        os.close(fs_fd)


def _settings(fstype: str, option: str) -> list[tuple[str, str | None]]:
    """The fsconfig settings for one option: ``key=value`` is a string, a bare word a flag; an overlay's
    lowerdir becomes one ``lowerdir+`` per layer, and ``datadir+`` for the data-only ones after ``::``."""
    key, sep, value = option.partition("=")
    if not sep:
        return [(key, None)]
    if fstype != "overlay" or key != "lowerdir":
        return [(key, value)]
    settings, layer_key = [], "lowerdir+"
    for part in _UNESCAPED_COLON.split(value):
        if part:
            settings.append((layer_key, _ESCAPE.sub(r"\1", part)))
        else:  # "::": the layers after it hold data only
            layer_key = "datadir+"
    return settings


def _fsconfig(fs_fd: int, command: int, key: str | None, value: str | None, what: str) -> None:
    if _libc.fsconfig(fs_fd, command, key and os.fsencode(key),
                     None if value is None else os.fsencode(value), 0) != 0:
        _raise(ctypes.get_errno(), what, _context_messages(fs_fd))


def _context_messages(fs_fd: int) -> str:
    """What the filesystem logged on its mount context ("e overlay: ..." lines), errors first."""
    lines = []
    with contextlib.suppress(OSError):  # ENODATA once the log is empty
        while message := os.read(fs_fd, 4096):
            lines.append(os.fsdecode(message).strip())
    return "; ".join(sorted(lines, key=lambda line: not line.startswith("e ")))


def mount_erofs(image: StrPath, target: StrPath, devices: Sequence[StrPath] = (), options: Sequence[str] = ()) -> None:
    """Mount an EROFS image read-only: the file itself where the kernel can read it, else through read-only
    loop devices for the image and its extra ``devices``, which go away with the mount."""
    try:
        mount(image, target, "erofs", MS_RDONLY, [*options, *(f"device={os.fsdecode(d)}" for d in devices)])
        return
    except MountError as exc:
        if exc.errno != errno.ENOTBLK:
            raise
    with contextlib.ExitStack() as loops:
        image_loop = loops.enter_context(loop_device(image))
        device_loops = [loops.enter_context(loop_device(d)) for d in devices]
        try:
            mount(image_loop, target, "erofs", MS_RDONLY, [*options, *(f"device={d}" for d in device_loops)])
        except MountError as exc:
            raise MountError(exc.errno, f"{exc.strerror} (a loop device of {os.fsdecode(image)})") from None


@contextlib.contextmanager
def loop_device(backing: StrPath) -> Iterator[str]:
    """A read-only loop device showing ``backing``, for the block: once the block ends the device detaches
    itself as soon as nothing else (a mount) holds it open."""
    try:
        loop_fd, path = _attach_loop(backing)
    except OSError as exc:
        raise MountError(exc.errno or errno.EIO, f"loop device for {os.fsdecode(backing)}: {exc.strerror}") from exc
    try:
        yield path
    finally:
        os.close(loop_fd)


def _attach_loop(backing: StrPath) -> tuple[int, str]:
    """A free loop device configured read-only and auto-clearing on ``backing``: its open fd and path."""
    with contextlib.ExitStack() as fds:
        backing_fd = os.open(backing, os.O_RDONLY | os.O_CLOEXEC)
        fds.callback(os.close, backing_fd)
        control_fd = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        fds.callback(os.close, control_fd)
        config = _LoopConfig(fd=backing_fd)
        config.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR
        config.info.lo_file_name = os.fsencode(backing)[:63]
        for _ in range(LOOP_ATTEMPTS):
            path = f"/dev/loop{fcntl.ioctl(control_fd, LOOP_CTL_GET_FREE)}"
            loop_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.ioctl(loop_fd, LOOP_CONFIGURE, bytes(config))
                return loop_fd, path
            except OSError as exc:
                os.close(loop_fd)
                if exc.errno != errno.EBUSY:  # EBUSY: another process configured it first
                    raise
        raise OSError(errno.EBUSY, "every free loop device was taken by another process first")


def unmount(target: StrPath, *, detach: bool = True) -> None:
    """umount2: detached (the default) the mount leaves the tree at once and ends when nothing uses it."""
    if _libc.umount2(os.fsencode(target), MNT_DETACH if detach else 0) != 0:
        _raise(ctypes.get_errno(), f"umount {os.fsdecode(target)}")
