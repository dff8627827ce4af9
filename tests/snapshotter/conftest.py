"""Fixtures: a fresh snapshotter daemon per test, in each mode."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fusemount import fuse_missing
from tests.snapshotter.daemon import Client, SnapshotterProcess
from tests.snapshotter.mounting import unmount_below

MODES = ("kernel", "fuse")
# Why fuse mode (erofsfuse daemons) cannot run on this host, or None.
erofsfuse_missing = fuse_missing


def mode_param(mode: str):
    """A pytest param for ``mode``, marked ``kernel`` or ``fuse``: skipped where that mode cannot run."""
    return pytest.param(mode, marks=getattr(pytest.mark, mode), id=mode)


@dataclass
class Env:
    """One test's world, as containerd's testsuite makes it: a snapshotter root and a play area."""

    client: Client
    daemon: SnapshotterProcess
    root: Path
    work: Path
    mode: str


# Unused erofsfuse daemons stop at once, so the tests of reference counting see them go with their last
# snapshot; test_idle_daemons.py gives them idle time (a later option wins).
STOP_UNUSED_DAEMONS = ("--fuse-idle-seconds", "0")


def start_env(base: Path, mode: str, extra: Sequence[str] = (), environment: Mapping[str, str] | None = None) -> Env:
    root, work = base / "root", base / "work"
    work.mkdir(parents=True)
    daemon = SnapshotterProcess(root, base / "snapshotter.sock", mode, *STOP_UNUSED_DAEMONS, *extra)
    daemon.environment = dict(environment or {})
    daemon.start()
    return Env(Client(daemon.address), daemon, root, work, mode)


def stop_env(env: Env, base: Path) -> None:
    env.client.close()
    env.daemon.stop()
    unmount_below(base)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=[mode_param(m) for m in MODES])
def env(request, tmp_path: Path) -> Iterator[Env]:
    """A fresh snapshotter per test in each mode, with umask 0 as in containerd's testsuite."""
    old_umask = os.umask(0)
    e = start_env(tmp_path / "t", request.param)
    try:
        yield e
    finally:
        os.umask(old_umask)
        stop_env(e, tmp_path / "t")
