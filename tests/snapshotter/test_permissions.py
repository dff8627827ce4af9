"""Who may use the snapshotter and its files: the socket is root's (or a configured group's), nothing under
the root is open to other users whatever the umask, and the mounts enforce file modes while letting
container processes of any uid read what their modes allow."""

from __future__ import annotations

import contextlib
import grp
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.snapshotter import fstest
from tests.snapshotter.conftest import Env, mode_param
from tests.snapshotter.daemon import SnapshotterProcess
from tests.snapshotter.mounting import mounts_below
from tests.snapshotter.test_lifecycle import build_chain, stack_daemons
from tests.snapshotter.test_testsuite import mounted

UNPRIVILEGED = 1000
LAYER = fstest.apply(
    fstest.create_file("/public", b"anyone may read this\n", 0o644),
    fstest.create_file("/secret", b"root only\n", 0o600),
)
# What the snapshotter makes, by path relative to a snapshot directory or the root, and its exact mode.
MODES = {
    ".": 0o700, "snapshots": 0o700, "trash": 0o700, "metadata.db": 0o600,  # the root
    "<id>": 0o700, "fs": 0o755, "work": 0o700, ".erofslayer": 0o644,  # a snapshot
    "layer.erofs": 0o644, "stack": 0o755, "stack.json": 0o644, "stack.log": 0o600,
}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_nothing_is_open_to_other_users(env: Env) -> None:
    """With umask 0 (the fixture's) every directory and file the snapshotter makes has its intended mode."""
    c = env.client
    build_chain(env, LAYER, LAYER)
    c.prepare("container", "layer-1")
    c.view("inspect", "layer-0")
    assert mode_of(env.daemon.address) == 0o600
    assert stat.S_ISSOCK(env.daemon.address.lstat().st_mode)
    held = {m.target for m in mounts_below(env.root)}
    checked = []
    for name in (".", "snapshots", "trash", "metadata.db"):
        checked.append((name, env.root / name))
    for snapshot in (env.root / "snapshots").iterdir():
        checked.append(("<id>", snapshot))
        checked += [(entry.name, entry) for entry in snapshot.iterdir() if entry not in held]
    for name, path in checked:
        assert mode_of(path) == MODES[name], f"{path}: {mode_of(path):04o}"
    for extra in env.root.glob("metadata.db-*"):  # SQLite's journal files follow the database
        assert mode_of(extra) == MODES["metadata.db"], extra
    assert {name for name, _ in checked} >= {"fs", "work", ".erofslayer", "layer.erofs"}


def test_a_configured_group_may_use_the_socket(tmp_path: Path) -> None:
    group = next(g for g in grp.getgrall() if g.gr_gid != 0)
    address = tmp_path / "run" / "erofs" / "snapshotter.sock"
    daemon = SnapshotterProcess(tmp_path / "root", address, "kernel", "--socket-group", group.gr_name)
    daemon.start()
    try:
        for path, mode in ((address, 0o660), (address.parent, 0o710)):
            st = path.lstat()
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, 0, group.gr_gid), path
    finally:
        daemon.stop()
    assert not address.exists()  # a stopped snapshotter leaves no socket behind
    proc = subprocess.run([*SnapshotterProcess.base_command(), "--socket-group", "no-such-group-here"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no-such-group-here" in proc.stderr


@contextlib.contextmanager
def open_directory():
    """A directory every user can enter (pytest's own are root's alone)."""
    with tempfile.TemporaryDirectory(prefix="erofs-perm-") as path:
        os.chmod(path, 0o755)
        yield Path(path)


def read_as(uid: int, path: Path) -> subprocess.CompletedProcess:
    # setpriv, not subprocess's user=: that forks this process, whose gRPC threads' fork handlers can crash
    # the child before it runs cat (seen as SIGBUS); without user= the child is spawned with vfork
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "cat", str(path)],
                          capture_output=True, text=True)


def test_mounts_enforce_modes_and_admit_every_user(env: Env) -> None:
    """A view is a bind of the layer's mount itself, so a container process reads the snapshotter's mount
    with its own uid: FUSE must admit other users (allow_other) and check modes (default_permissions)."""
    build_chain(env, LAYER)
    with open_directory() as place, mounted(env.client.view("inspect", "layer-0"), place / "view") as view:
        for m in mounts_below(env.root):
            assert "ro" in m.options, m
            if m.fstype.startswith("fuse"):
                assert {"allow_other", "default_permissions"} <= set(m.super_options), m
        public, secret = read_as(UNPRIVILEGED, view / "public"), read_as(UNPRIVILEGED, view / "secret")
        assert (public.returncode, public.stdout) == (0, "anyone may read this\n"), public.stderr
        assert secret.returncode != 0 and "Permission denied" in secret.stderr
        assert (view / "secret").read_text() == "root only\n"  # root may


@pytest.mark.parametrize("env", [mode_param("fuse")], indirect=True)
def test_erofsfuse_daemons_are_spared_by_the_oom_killer(env: Env) -> None:
    try:
        Path("/proc/self/oom_score_adj").write_text("-1")  # lowering it needs CAP_SYS_RESOURCE
        Path("/proc/self/oom_score_adj").write_text("0")
    except PermissionError:
        pytest.skip("this machine does not let even root lower oom_score_adj (no CAP_SYS_RESOURCE)")
    build_chain(env, LAYER)
    env.client.prepare("container", "layer-0")
    for daemon in stack_daemons(env.root).values():
        for pid in (daemon.keeper, *daemon.workers):
            assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "-1000"
