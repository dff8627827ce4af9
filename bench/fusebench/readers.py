"""The readers under test, how each mounts an image, and how every mount is taken down again.

FUSE daemons run in the foreground (``-f``) as our own child processes in
their own session: we know their pid (for VmHWM and CPU time), a Ctrl-C on
the terminal reaches only the benchmark, and the benchmark can always stop
them. The serving code is the same as in background mode.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from erofsfuse.erofs.verity import VerityParams, format_tree
from erofsfuse.host import mounting
from erofsfuse.host.mountinfo import mount_table

from .images import Image

MOUNT_TIMEOUT = 60.0

KERNEL, EROFSFUSE, EROFS_UTILS, SQUASHFUSE = "kernel", "erofsfuse", "erofs-utils", "squashfuse"
VERIFIED = "erofsfuse-verity"  # erofsfuse checking every block against the image's dm-verity tree
READER_NAMES = (KERNEL, EROFSFUSE, VERIFIED, EROFS_UTILS, SQUASHFUSE)
REPO_ROOT = Path(__file__).resolve().parents[2]
STARTED_DAEMONS: list[subprocess.Popen] = []  # every daemon ever started, so none can outlive the benchmark


class MountError(Exception):
    """A reader could not mount an image."""


@dataclass(frozen=True)
class Reader:
    """A way to read an image: the kernel driver, or a FUSE daemon started with ``command``."""

    name: str
    image_kind: str  # "erofs" or "squashfs"
    description: str
    command: tuple[str, ...] = ()  # FUSE daemon, run as: command -f IMAGE MOUNTPOINT
    verified: bool = False  # served with -o verity= against a tree beside the image

    @property
    def is_kernel(self) -> bool:
        return not self.command


@dataclass
class Mount:
    """A live mount; ``daemon`` is the FUSE process serving it (None for the kernel)."""

    mountpoint: Path
    seconds: float  # from starting the mount until the first stat of its root succeeded
    daemon: subprocess.Popen | None = None

    def peak_rss_bytes(self) -> int | None:
        """The daemon's VmHWM: the most resident memory it ever had."""
        if self.daemon is None:
            return None
        with open(f"/proc/{self.daemon.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return None

    def cpu_seconds(self) -> float | None:
        """User plus system time the daemon has used so far, all threads."""
        if self.daemon is None:
            return None
        with open(f"/proc/{self.daemon.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- finding the readers ------------------------------------------------------------------
def find_erofs_utils_fuse() -> str | None:
    """erofs-utils' erofsfuse on PATH: a native binary, unlike this project's Python command of the same name."""
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(directory or ".", "erofsfuse")
        if not os.access(candidate, os.X_OK) or os.path.isdir(candidate):
            continue
        with contextlib.suppress(OSError), open(candidate, "rb") as f:
            if f.read(4) == b"\x7fELF":
                return candidate
    return None


def available_readers() -> tuple[dict[str, Reader], dict[str, str]]:
    """Every reader this machine has, and why each missing one is missing."""
    readers = {
        KERNEL: Reader(KERNEL, "erofs", "kernel EROFS, file-backed (a loop device where the kernel refuses the file)"),
        EROFSFUSE: Reader(EROFSFUSE, "erofs", f"this project: {Path(sys.executable).name} -m erofsfuse.cli.mount",
                          (sys.executable, "-m", "erofsfuse.cli.mount")),
        VERIFIED: Reader(VERIFIED, "erofs", "this project with -o verity=ROOTHASH,verity_hash=IMAGE.verity",
                         (sys.executable, "-m", "erofsfuse.cli.mount"), verified=True),
    }
    missing = {}
    utils = find_erofs_utils_fuse()
    if utils:
        readers[EROFS_UTILS] = Reader(EROFS_UTILS, "erofs", f"erofs-utils {utils}", (utils,))
    else:
        missing[EROFS_UTILS] = "erofs-utils' erofsfuse is not on PATH (Debian 12 does not package it)"
    squashfuse = shutil.which("squashfuse")
    if squashfuse and shutil.which("mksquashfs"):
        readers[SQUASHFUSE] = Reader(SQUASHFUSE, "squashfs", f"squashfuse {squashfuse}", (squashfuse,))
    else:
        missing[SQUASHFUSE] = "squashfuse or mksquashfs is not installed"
    return readers, missing


# -- mount table --------------------------------------------------------------------------
def mounted_points() -> list[str]:
    return [str(m.target) for m in mount_table()]


def is_mounted(mountpoint: Path) -> bool:
    return str(mountpoint.resolve()) in mounted_points()


def detach(target: Path) -> None:
    """Unmount lazily, whatever still uses the mount (the last resort)."""
    with contextlib.suppress(mounting.MountError):
        mounting.unmount(target)


def kill_leftover_daemons() -> int:
    """Kill daemons that are somehow still running (the last resort); returns how many were."""
    leftover = [daemon for daemon in STARTED_DAEMONS if daemon.poll() is None]
    for daemon in leftover:
        daemon.kill()
        daemon.wait()
    return len(leftover)


def detach_everything_under(root: Path) -> list[str]:
    """Lazily unmount whatever is still mounted below ``root`` (the last resort); returns what was."""
    prefix = str(root.resolve()) + os.sep
    stale = [p for p in mounted_points() if p.startswith(prefix)]
    for point in reversed(stale):
        detach(Path(point))
    return stale


# -- mounting -----------------------------------------------------------------------------
def kernel_mount(image: Path, mountpoint: Path) -> Mount:
    start = time.perf_counter()
    mounting.mount_erofs(image, mountpoint)
    os.stat(mountpoint)
    return Mount(mountpoint, time.perf_counter() - start)


def verity_options(image: Path) -> list[str]:
    """``-o verity=...`` for ``image``, its tree written beside it once (again when the image is newer)."""
    tree, root_file = image.with_name(image.name + ".verity"), image.with_name(image.name + ".verity.root")
    if not root_file.exists() or root_file.stat().st_mtime < image.stat().st_mtime:
        tree.unlink(missing_ok=True)
        root = format_tree(str(image), str(tree), VerityParams(salt=bytes(32))).root_hash.hex()
        root_file.write_text(root)
    return ["-o", f"verity={root_file.read_text()},verity_hash={tree}"]


def fuse_mount(reader: Reader, image: Path, mountpoint: Path, log: Path) -> Mount:
    """Start the daemon and wait until a stat of the mount's root is answered by it."""
    parent_device = os.stat(mountpoint.parent).st_dev
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    with open(log, "ab") as log_file:
        log_file.write(f"\n== {' '.join(reader.command)} -f {image} {mountpoint}\n".encode())
        log_file.flush()
        options = verity_options(image) if reader.verified else []
        start = time.perf_counter()
        daemon = subprocess.Popen([*reader.command, *options, "-f", str(image), str(mountpoint)],
                                  stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env,
                                  start_new_session=True)
        STARTED_DAEMONS.append(daemon)
    mount = Mount(mountpoint, 0.0, daemon)
    try:
        wait_until_served(mount, parent_device, log)
    except BaseException:
        stop(mount)
        raise
    mount.seconds = time.perf_counter() - start
    return mount


def wait_until_served(mount: Mount, parent_device: int, log: Path) -> None:
    """Poll the root until its device differs from the parent directory's, i.e. the daemon answered."""
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while True:
        with contextlib.suppress(OSError):
            if os.stat(mount.mountpoint).st_dev != parent_device:
                return
        if mount.daemon.poll() is not None:
            raise MountError(f"daemon exited with status {mount.daemon.returncode}: {tail(log)}")
        if time.monotonic() > deadline:
            raise MountError(f"not mounted after {MOUNT_TIMEOUT:.0f}s: {tail(log)}")
        time.sleep(0.001)


def tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace").strip().splitlines()
    return " / ".join(text[-lines:])


def stop(mount: Mount) -> None:
    """Unmount and make sure no daemon is left behind, escalating as needed."""
    if mount.daemon is None:
        try:
            mounting.unmount(mount.mountpoint, detach=False)
        except mounting.MountError:
            detach(mount.mountpoint)
        return
    subprocess.run(["fusermount3", "-u", str(mount.mountpoint)], capture_output=True, check=False, timeout=60)
    try:
        mount.daemon.wait(timeout=10)
    except subprocess.TimeoutExpired:
        mount.daemon.terminate()
        try:
            mount.daemon.wait(timeout=5)
        except subprocess.TimeoutExpired:
            mount.daemon.kill()
            mount.daemon.wait()
    if is_mounted(mount.mountpoint):
        detach(mount.mountpoint)


@contextlib.contextmanager
def mounted(reader: Reader, image: Image, mountpoint: Path, log_dir: Path) -> Iterator[Mount]:
    """Mount ``image`` with ``reader`` for the duration of the block, unmounting whatever happens."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    if is_mounted(mountpoint):
        detach(mountpoint)
    if reader.is_kernel:
        mount = kernel_mount(image.path, mountpoint)
    else:
        mount = fuse_mount(reader, image.path, mountpoint, log_dir / f"{reader.name}.log")
    try:
        yield mount
    finally:
        stop(mount)
