"""erofsfuse daemons: one per committed chain in use, serving the whole chain as one merged tree.

A daemon is started on demand when a snapshot on top of the chain needs it, and stopped by unmounting
once no snapshot does and its idle time is up (see idle.py). Who needs which stack (its reference count)
is derived from the metadata store by the planner, whether a daemon runs is read from the mount table, and
since when an unused one is idle is a file beside it: none of it is kept in memory, so all of it survives a
restart of the snapshotter, and daemons keep serving running containers meanwhile.

Daemons run detached (their own session, no descriptor of ours) with ``-o failover``: a keeper process
holds the FUSE connection and replaces a worker that dies, on the same connection, so the overlays of
running containers never notice. The snapshotter therefore never replaces a mount that still answers;
only a mount whose connection is gone (worker and keeper both dead) is mounted again, for new users, since
the overlays of running containers hold the dead one.
"""

from __future__ import annotations

import enum
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from erofsfuse.fuse.failover import KEEPER_NAME, WORKER_NAME
from erofsfuse.host.credentials import shares_mount_namespace

from .errors import MountError
from .idle import boot_clock
from .layout import Layout, make_dir, write_file
from .mounts import mounts_under, unmount
from .planner import stack_document

log = logging.getLogger(__name__)

START_TIMEOUT = 120.0  # seconds for erofsfuse to report a live mount
PROBE_TIMEOUT = 10.0  # seconds a daemon may take to answer (a failover worker being replaced answers late)
# allow_other: container processes of any uid read through the overlay; failover: survive a dead worker.
# erofsfuse always adds ro and default_permissions (the kernel checks file modes).
OPTIONS = ("allow_other", "failover", "fsname=erofs-snapshotter", "subtype=erofs")
LOG_MODE = 0o600


def find_erofsfuse(configured: str | None = None) -> str | None:
    """The erofsfuse executable: as configured, next to this Python (a venv), or on PATH."""
    if configured:
        return configured
    beside = Path(sys.executable).parent / "erofsfuse"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("erofsfuse")


class Health(enum.Enum):
    ANSWERING = "answering"
    DEAD = "dead"  # the connection is gone: ENOTCONN
    SILENT = "silent"  # no answer within PROBE_TIMEOUT


def probe(mountpoint: Path) -> Health:
    """Ask a FUSE mount's daemon for statfs (never cached). A dead connection answers ENOTCONN at once; a
    hung daemon never answers, and its request cannot be withdrawn, so the asking thread is left behind."""
    outcome: list[OSError | None] = []

    def ask() -> None:
        try:
            os.statvfs(mountpoint)
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    asker = threading.Thread(target=ask, name=f"probe {mountpoint}", daemon=True)
    asker.start()
    asker.join(PROBE_TIMEOUT)
    if not outcome:
        return Health.SILENT
    error = outcome[0]
    if error is not None and error.errno in (errno.ENOTCONN, errno.ECONNABORTED):
        return Health.DEAD
    return Health.ANSWERING  # an error answer is an answer too


@dataclass(frozen=True)
class DaemonProcesses:
    """The processes serving one mount: the failover keeper (None if it is gone) and its worker(s)."""

    keeper: int | None
    workers: tuple[int, ...]


def daemon_processes(mountpoints: Iterable[Path], *, elsewhere: bool = False) -> dict[Path, DaemonProcesses]:
    """Find the erofsfuse processes of each mountpoint (one pass over /proc): those of this mount namespace,
    or with ``elsewhere`` those serving the same path in another one, which this process can neither see nor
    unmount (a snapshotter started anew by a restarted rootlesskit lives in a new mount namespace).

    Keepers and workers name themselves (``erofsfuse-keep``, ``erofsfuse``); both carry the command line
    that started them, which names the mountpoint.
    """
    wanted = {os.fsencode(m): m for m in mountpoints}
    keepers: dict[Path, int] = {}
    workers: dict[Path, list[int]] = {m: [] for m in wanted.values()}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", "rb") as f:
                name = f.read().strip()
            if name not in (KEEPER_NAME, WORKER_NAME):
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            if not wanted.keys() & args or shares_mount_namespace(entry) is elsewhere:
                continue
        except OSError:
            continue
        for raw, mountpoint in wanted.items():
            if raw in args:
                if name == KEEPER_NAME:
                    keepers[mountpoint] = int(entry)
                else:
                    workers[mountpoint].append(int(entry))
    return {m: DaemonProcesses(keepers.get(m), tuple(sorted(workers[m]))) for m in wanted.values()}


def resident_memory(processes: DaemonProcesses) -> int:
    """Bytes of memory the keeper and workers of one mount hold (VmRSS; 0 for a process that is gone)."""
    total = 0
    for pid in filter(None, (processes.keeper, *processes.workers)):
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                total += next((int(line.split()[1]) * 1024 for line in f if line.startswith(b"VmRSS:")), 0)
        except OSError:
            continue
    return total


def start_failure(log_path: Path, start: int) -> str:
    """Why erofsfuse did not start, from what it wrote to its log from offset ``start`` on: the line the command
    prints for it (``erofsfuse: REASON``) rather than what its processes logged before; the tail if there is none."""
    with open(log_path, "rb") as f:
        f.seek(start)
        written = f.read().decode(errors="replace")
    reasons = [line.removeprefix("erofsfuse: ") for line in written.splitlines() if line.startswith("erofsfuse: ")]
    return reasons[-1] if reasons else written[-2000:].strip()


class FuseDaemons:
    def __init__(self, layout: Layout, binary: str | None) -> None:
        self.layout = layout
        self.binary = binary

    def running(self) -> dict[int, Path]:
        """Stacks mounted under the root: top layer id -> mountpoint."""
        found = {}
        for entry in mounts_under(self.layout.snapshots_dir):
            owner = self.layout.owner_of(entry.target)
            if owner and owner[1] == "stack" and entry.fstype.startswith("fuse"):
                found[owner[0]] = entry.target
        return found

    def report_adopted(self) -> None:
        """Log the daemons a previous run left (they are used as they are), warning about any without a keeper."""
        running = self.running()
        processes = daemon_processes(running.values())
        now = boot_clock()
        for top, mountpoint in sorted(running.items()):
            found = processes[mountpoint]
            since = self.idle_since(top)
            if found.keeper is not None:
                log.info("adopting erofsfuse for chain %d at %s (keeper %d, workers %s%s)", top, mountpoint,
                         found.keeper, list(found.workers), "" if since is None else f", idle for {now - since:.0f}s")
            else:
                log.warning("adopting erofsfuse for chain %d at %s without a keeper (workers %s): it serves, but "
                            "if it dies the containers using it lose their files", top, mountpoint,
                            list(found.workers))

    def ensure(self, chain: Sequence[int], roots: Mapping[int, str] | None = None,
               xattrs: Mapping[int, bool] | None = None) -> Path:
        """Make the merged tree of ``chain`` (nearest first) available, the layers with a root hash in ``roots``
        read verified, those in ``xattrs`` known to have xattrs or not; returns its mountpoint.

        A mount that answers is used as it is, whoever started it. One whose worker just died answers once
        the keeper's new worker serves; one that answers nothing within PROBE_TIMEOUT is an error (a new
        mount there would hang the same way for the overlays built on it).
        """
        top = chain[0]
        mountpoint = self.layout.stack_mountpoint(top)
        if top in self.running():
            health = probe(mountpoint)
            if health is Health.ANSWERING:
                since = self.idle_since(top)
                if since is not None:
                    log.info("reusing idle erofsfuse for chain %d (idle for %.0fs)", top, boot_clock() - since)
                    self.clear_idle(top)
                return mountpoint
            if health is Health.SILENT:
                raise MountError(f"erofsfuse for chain {top} at {mountpoint} has not answered in {PROBE_TIMEOUT:.0f}s")
            log.warning("erofsfuse for chain %d is gone (worker and keeper); mounting the chain again", top)
            unmount(mountpoint)
        if not self.binary:
            raise MountError("fuse mode needs erofsfuse, which is not installed")
        self.report_elsewhere(top, mountpoint)
        make_dir(mountpoint, 0o755)
        stack_file = self.layout.stack_file(top)
        write_file(stack_file, json.dumps(stack_document(chain, self.layout, roots, xattrs), indent=1).encode(), 0o644)
        log_path = self.layout.stack_log(top)
        cmd = [self.binary, "-o", ",".join([*OPTIONS, f"log={log_path}"]), str(stack_file), str(mountpoint)]
        # erofsfuse returns once the mount is live and keeps serving in the background, in its own session;
        # its output goes to the same log file (a pipe could stay open in the background daemon).
        logfile = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_MODE)
        log_start = os.fstat(logfile).st_size
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile,
                                  timeout=START_TIMEOUT, start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            raise MountError(f"erofsfuse for chain {top} did not start in {START_TIMEOUT:.0f}s") from exc
        finally:
            os.close(logfile)
        if proc.returncode != 0 or top not in self.running():
            raise MountError(f"erofsfuse for chain {top} failed (exit {proc.returncode}): "
                             f"{start_failure(log_path, log_start)}")
        self.clear_idle(top)  # left by a daemon that was mounted here before (and died)
        log.info("started erofsfuse for chain %d (%d layers) at %s", top, len(chain), mountpoint)
        return mountpoint

    def report_elsewhere(self, top: int, mountpoint: Path) -> None:
        """Say so when a daemon for this chain serves in another mount namespace: this one gets its own."""
        found = daemon_processes([mountpoint], elsewhere=True)[mountpoint]
        if found.keeper is not None or found.workers:
            log.warning("erofsfuse for chain %d also runs in another mount namespace (keeper %s, workers %s), which "
                        "this snapshotter cannot see or stop (it was started in a new one, as a restarted rootlesskit "
                        "does): it serves the containers started there until they end; starting one for this "
                        "namespace", top, found.keeper, list(found.workers))

    def stop(self, top: int, mountpoint: Path, reason: str) -> None:
        """Unmount a stack; its daemon exits as soon as nothing (no container overlay) holds the mount."""
        log.info("stopping erofsfuse for chain %d: %s", top, reason)
        unmount(mountpoint)
        self.clear_idle(top)

    def idle_since(self, top: int) -> float | None:
        """When the stack's last snapshot went (boot clock), if it is idle."""
        try:
            return float(self.layout.stack_idle(top).read_text())
        except (OSError, ValueError):
            return None

    def mark_idle(self, top: int, since: float) -> None:
        """Record when the stack's last snapshot went (boot clock), for its idle time to survive a restart."""
        write_file(self.layout.stack_idle(top), f"{since:.3f}\n".encode(), 0o644)

    def clear_idle(self, top: int) -> None:
        """Forget when the stack went idle: a snapshot uses it again, or it is stopped."""
        self.layout.stack_idle(top).unlink(missing_ok=True)
