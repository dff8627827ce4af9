"""Mounting with the ``erofsfuse`` command from tests, and finding its daemon."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from erofsfuse.host.mountinfo import mount_table

ERofsFUSE = [sys.executable, "-m", "erofsfuse.cli.mount"]


def fuse_missing() -> str | None:
    """Why erofsfuse cannot mount on this host, or None."""
    if not os.path.exists("/dev/fuse"):
        return "FUSE is not available on this host: /dev/fuse is missing"
    if not shutil.which("fusermount3"):
        return "FUSE is not available on this host: fusermount3 is not installed (Debian: fuse3)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "FUSE is not available to this user: /dev/fuse is not open to it"
    return None


def erofsfuse_command(image: str, mountpoint: str, devices=(), options=(), args=()) -> list[str]:
    """The erofsfuse command line; ``args`` are further options (``--offset=N`` …)."""
    cmd = [*ERofsFUSE, *(f"--device={d}" for d in devices), *args]
    if options:
        cmd += ["-o", ",".join(options)]
    return [*cmd, image, mountpoint]


def is_mounted(mountpoint: str) -> bool:
    target = Path(os.path.realpath(mountpoint))
    return any(m.target == target for m in mount_table())


def daemon_pids(mountpoint: str) -> list[int]:
    """Processes whose command line names ``mountpoint`` (the erofsfuse daemon)."""
    pids = []
    needle = os.path.realpath(mountpoint).encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if b"erofsfuse.cli.mount" in b" ".join(args) and any(os.path.realpath(a) == needle for a in args if a):
                pids.append(int(entry))
    return pids


def process_stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name: state, ppid, … (``[0]`` is field 3)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; an exited process waiting to be reaped counts as gone."""
    try:
        return process_stat(pid)[0] != "Z"
    except OSError:
        return False


def wait_gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.02)
    return False


def unmount(mountpoint: str) -> None:
    pids = daemon_pids(mountpoint)
    subprocess.run(["fusermount3", "-u", mountpoint], check=False, capture_output=True)
    if is_mounted(mountpoint):
        subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
    wait_gone(pids)


@contextlib.contextmanager
def fuse_mount(image: str, devices=(), options=(), mountpoint: str | None = None, args=()):
    """Mount ``image`` with erofsfuse (background mode); yields the mountpoint."""
    with contextlib.ExitStack() as stack:
        mnt = mountpoint or stack.enter_context(tempfile.TemporaryDirectory(prefix="efuse-"))
        subprocess.run(erofsfuse_command(image, mnt, devices, options, args), check=True, timeout=60,
                       capture_output=True)
        try:
            yield mnt
        finally:
            unmount(mnt)


@contextlib.contextmanager
def traced_mount(image: str, log_path: str, options=()):
    """Mount ``image`` with every request logged (``--debug``) to ``log_path``; yields the mountpoint."""
    with tempfile.TemporaryDirectory(prefix="efuse-") as mnt, open(log_path, "wb") as log:
        daemon = subprocess.Popen(erofsfuse_command(image, mnt, options=options, args=["--debug"]),
                                  stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while not is_mounted(mnt):
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"erofsfuse --debug did not mount {image}: see {log_path}")
                time.sleep(0.02)
            yield mnt
        finally:
            unmount(mnt)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
