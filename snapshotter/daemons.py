"""erofsfuse daemons: one per committed chain in use, serving the whole chain as one merged tree.

A daemon is started on demand when a snapshot on top of the chain needs it, and stopped by unmounting
once no snapshot does. Who needs which stack (its reference count) is derived from the metadata store by
the planner, and whether a daemon runs is read from the mount table: neither is kept in memory, so both
survive a restart of the snapshotter, and daemons keep serving running containers meanwhile.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import MountError
from .layout import Layout
from .mounts import mounts_under, unmount
from .planner import stack_document

log = logging.getLogger(__name__)

START_TIMEOUT = 120.0  # seconds for erofsfuse to report a live mount


def find_erofsfuse(configured: str | None = None) -> str | None:
    """The erofsfuse executable: as configured, next to this Python (a venv), or on PATH."""
    if configured:
        return configured
    beside = Path(sys.executable).parent / "erofsfuse"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("erofsfuse")


def _alive(mountpoint: Path) -> bool:
    """A FUSE mount whose daemon died answers ENOTCONN (statfs always asks the daemon; stat may be cached)."""
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO):
            return False
        raise
    return True


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

    def ensure(self, chain: Sequence[int]) -> Path:
        """Make the merged tree of ``chain`` (nearest first) available; returns its mountpoint."""
        top = chain[0]
        mountpoint = self.layout.stack_mountpoint(top)
        if top in self.running():
            if _alive(mountpoint):
                return mountpoint
            log.warning("erofsfuse for chain %d died; restarting it", top)
            unmount(mountpoint)
        if not self.binary:
            raise MountError("fuse mode needs erofsfuse, which is not installed")
        mountpoint.mkdir(exist_ok=True)
        stack_file = self.layout.stack_file(top)
        tmp = stack_file.with_name(f".{stack_file.name}.tmp")
        tmp.write_text(json.dumps(stack_document(chain, self.layout), indent=1))
        tmp.rename(stack_file)
        log_path = self.layout.stack_log(top)
        options = f"allow_other,fsname=erofs-snapshotter,subtype=erofs,log={log_path}"
        cmd = [self.binary, "-o", options, str(stack_file), str(mountpoint)]
        # erofsfuse returns once the mount is live and keeps serving in the background; its output goes to the
        # same log file (a pipe could stay open in the background daemon).
        with open(log_path, "ab") as logfile:
            try:
                proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile,
                                      timeout=START_TIMEOUT, start_new_session=True)
            except subprocess.TimeoutExpired as exc:
                raise MountError(f"erofsfuse for chain {top} did not start in {START_TIMEOUT:.0f}s") from exc
        if proc.returncode != 0 or top not in self.running():
            tail = self.layout.stack_log(top).read_text(errors="replace")[-2000:].strip()
            raise MountError(f"erofsfuse for chain {top} failed (exit {proc.returncode}): {tail}")
        log.info("started erofsfuse for chain %d (%d layers) at %s", top, len(chain), mountpoint)
        return mountpoint

    def stop(self, top: int, mountpoint: Path) -> None:
        """Unmount a stack; its daemon exits as soon as nothing (no container overlay) holds the mount."""
        log.info("stopping erofsfuse for chain %d: no snapshot uses it", top)
        unmount(mountpoint)
