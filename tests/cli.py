"""Helpers for the erofstool tests: running the command, tmpfs mounts for scratch trees, deadlines."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

from .kernel import mount, umount

TOOL_TIMEOUT = 120


def run_tool(*args: str | os.PathLike, timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess:
    """``erofstool ARGS`` in a child process, stdout as bytes and stderr as text."""
    proc = subprocess.run([sys.executable, "-m", "erofsfuse.cli.tool", *map(os.fsdecode, args)],
                          capture_output=True, timeout=timeout)
    proc.stderr = proc.stderr.decode("utf-8", "replace")
    return proc


def device_args(devices) -> list[str]:
    """``--device`` options for these device paths (in device-table order)."""
    return [arg for dev in devices for arg in ("--device", dev)]


def assert_one_error_line(proc: subprocess.CompletedProcess, image: str | os.PathLike, *needles: str) -> str:
    """Exit status 1 and a single ``erofstool: IMAGE: ...`` line that names every needle."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"erofstool: {os.fsdecode(image)}: "), lines[0]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@contextlib.contextmanager
def tmpfs(path: str | os.PathLike, size: str = "1g"):
    """A tmpfs at ``path``: it keeps every xattr (large values, trusted.*, ACLs) that the tests write."""
    os.makedirs(path, exist_ok=True)
    mount("tmpfs", os.fspath(path), "tmpfs", 0, f"size={size},mode=0755")
    try:
        yield path
    finally:
        umount(os.fspath(path))


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (rather than hang) when the block takes longer than ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
