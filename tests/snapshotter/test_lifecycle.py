"""Layer blobs, mounts and daemons over a snapshot's life: commit, sharing, removal, restart, cleanup."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from snapshotter.convert import Readahead
from snapshotter.daemons import DaemonProcesses, daemon_processes
from snapshotter.planner import MODE_LABEL, MODE_REASON_LABEL
from tests.fusemount import process_stat, wait_gone
from tests.kernel import erofs_mount, mount
from tests.snapshotter import fstest
from tests.snapshotter.conftest import Env, mode_param, start_env, stop_env
from tests.snapshotter.mounting import mounts_below, unmount_below
from tests.snapshotter.test_testsuite import mounted
from tests.trees import describe_path, diff_trees

LAYER_1 = fstest.apply(
    fstest.create_dir("/etc", 0o755),
    fstest.create_file("/etc/os-release", b"NAME=test\n", 0o644),
    fstest.create_dir("/opaque", 0o755),
    fstest.create_file("/opaque/old", b"old\n", 0o644),
    fstest.create_file("/deleted", b"gone soon\n", 0o600),
    fstest.create_file("/xattrs", b"x\n", 0o644),
    fstest.set_xattr("/xattrs", "user.color", b"blue"),
)
LAYER_2 = fstest.apply(
    fstest.remove_all("/deleted"),
    fstest.remove_all("/opaque"),
    fstest.create_dir("/opaque", 0o750),
    fstest.create_file("/opaque/new", b"new\n", 0o644),
    fstest.create_file("/etc/hostname", b"box\n", 0o644),
    fstest.chown("/etc/hostname", 1000, 1000),
)


def upper_of(mounts) -> Path:
    """The upper dir in a Prepare answer: the overlay's upperdir, or the source of a bind."""
    for option in mounts[0].options:
        if option.startswith("upperdir="):
            return Path(option.removeprefix("upperdir="))
    return Path(mounts[0].source)


def snapshot_mounts(env: Env) -> list[tuple[str, str]]:
    """(mountpoint relative to the root, fstype) of the mounts the snapshotter holds."""
    return sorted((str(m.target.relative_to(env.root)), m.fstype) for m in mounts_below(env.root)
                  if m.target != env.root)


def parent_pid(pid: int) -> int:
    return int(process_stat(pid)[1])


def stack_daemons(root: Path) -> dict[Path, DaemonProcesses]:
    """The keeper and workers of each erofsfuse mount under a snapshotter's root, checked against the process
    tree: the keeper is alive and is the parent of its one worker."""
    stacks = [m.target for m in mounts_below(root) if m.fstype.startswith("fuse")]
    found = daemon_processes(stacks)
    for mountpoint, daemon in found.items():
        assert daemon.keeper is not None and len(daemon.workers) == 1, (mountpoint, daemon)
        assert parent_pid(daemon.workers[0]) == daemon.keeper
    return found


def build_chain(env: Env, *appliers) -> list[str]:
    """Committed snapshots c0 <- c1 <- ..., each made by an applier on a mounted active snapshot."""
    parent = ""
    names = []
    for i, applier in enumerate(appliers):
        key, name = f"layer-{i}-active", f"layer-{i}"
        with mounted(env.client.prepare(key, parent), env.work / key) as target:
            applier(target)
        env.client.commit(name, key)
        names.append(name)
        parent = name
    return names


@pytest.fixture(params=[mode_param("kernel"), mode_param("fuse")])
def env_with_writable_root(request, tmp_path: Path):
    writable = tmp_path / "t" / "writable"
    writable.mkdir(parents=True)
    mount("tmpfs", str(writable), "tmpfs", 0, "size=256m")  # a separate filesystem, as in production
    e = start_env(tmp_path / "t", request.param, ["--writable-root", str(writable)])
    try:
        yield e, writable
    finally:
        stop_env(e, tmp_path / "t")


def test_commit_writes_the_upper_dir_into_the_blob(env: Env) -> None:
    """The blob holds exactly what overlayfs left in the upper dir: whiteouts, opaque xattrs, owners, times."""
    c = env.client
    build_chain(env, LAYER_1)
    mounts = c.prepare("l2", "layer-0")
    upper = upper_of(mounts)
    assert (upper.parent / ".erofslayer").exists()
    with mounted(mounts, env.work / "l2") as target:
        LAYER_2(target)
    before = describe_path(str(upper))
    assert before["/deleted"]["type"] == "chardev" and before["/deleted"]["rdev"] == {"major": 0, "minor": 0}
    assert "trusted.overlay.opaque" in before["/opaque"]["xattrs"]
    c.commit("l2-committed", "l2")
    blob = upper.parent / "layer.erofs"
    assert not (upper.parent / ".erofslayer").exists()
    with erofs_mount(str(blob)) as mnt:
        after = describe_path(mnt)
    keys = ("type", "mode", "uid", "gid", "size", "rdev", "target", "xattrs", "sha256", "mtime_ns")
    for tree in (before, after):
        tree["/"]["xattrs"] = {}
        for entry in tree.values():
            if entry["type"] == "dir":
                entry["size"] = None
    assert diff_trees(before, after, keys, sorted_entries=True) == []


def test_mounts_follow_snapshots_and_fuse_stacks_are_shared(env: Env) -> None:
    c = env.client
    build_chain(env, LAYER_1, LAYER_2)
    ids = {name: Path(c.view(f"probe-{name}", name)[0].source) for name in ("layer-1",)}
    c.remove("probe-layer-1")
    assert snapshot_mounts(env) == []  # nothing in use, nothing mounted

    first = c.prepare("first", "layer-1")
    second = c.prepare("second", "layer-1")
    held = snapshot_mounts(env)
    if env.mode == "kernel":
        assert [fstype for _, fstype in held] == ["erofs", "erofs"]
        assert first[0].options[-1] == second[0].options[-1] == "lowerdir=" + ":".join(
            str(env.root / mnt) for mnt, _ in sorted(held, reverse=True))
    else:
        assert held == [(str((ids["layer-1"]).relative_to(env.root)), "fuse.erofs")]
        (daemon,) = stack_daemons(env.root).values()
    for target_name, mounts in (("first", first), ("second", second)):
        with mounted(mounts, env.work / target_name) as target:
            fstest.check_directory_equal_with_applier(target, fstest.apply(LAYER_1, LAYER_2))

    c.remove("first")
    assert snapshot_mounts(env) == held  # still used by "second"
    c.remove("second")
    assert snapshot_mounts(env) == []
    if env.mode == "fuse":
        assert wait_gone([daemon.keeper, *daemon.workers])


def test_restart_keeps_records_and_mounts(env: Env) -> None:
    c = env.client
    build_chain(env, LAYER_1, LAYER_2)
    active = c.prepare("container", "layer-1", {"mine": "yes"})
    view = c.view("inspect", "layer-1")
    records = {i.name: i for i in c.walk()}
    held = snapshot_mounts(env)

    env.daemon.restart()
    assert {i.name: i for i in c.walk()} == records
    assert snapshot_mounts(env) == held  # adopted, not remounted
    assert c.mounts("container") == active
    assert c.mounts("inspect") == view
    with mounted(c.mounts("container"), env.work / "container") as target:
        fstest.check_directory_equal_with_applier(target, fstest.apply(LAYER_1, LAYER_2))
        (target / "written-after-restart").write_text("yes")
    c.commit("layer-2", "container")
    c.remove("inspect")
    assert snapshot_mounts(env) == []
    with mounted(c.view("final", "layer-2"), env.work / "final") as target:
        assert (target / "written-after-restart").read_text() == "yes"


def test_mounts_come_back_after_they_vanish(env: Env) -> None:
    """After a reboot (simulated by unmounting everything) Mounts mounts the layers again."""
    c = env.client
    build_chain(env, LAYER_1, LAYER_2)
    c.prepare("container", "layer-1")
    env.daemon.stop()
    unmount_below(env.root)
    env.daemon.start()
    with mounted(c.mounts("container"), env.work / "container") as target:
        fstest.check_directory_equal_with_applier(target, fstest.apply(LAYER_1, LAYER_2))


def test_a_blob_written_by_a_differ_is_used(env: Env) -> None:
    """containerd's EROFS differ writes layer.erofs next to the .erofslayer marker; commit keeps it."""
    check_differ_blob(env)


def test_a_differ_blob_moves_off_the_writable_root(env_with_writable_root) -> None:
    env, writable = env_with_writable_root
    check_differ_blob(env)
    assert list((writable / "snapshots").iterdir()) == []


def check_differ_blob(env: Env) -> None:
    c = env.client
    build_chain(env, LAYER_1)
    upper = upper_of(c.prepare("unpack", "layer-0"))
    layer_dir = env.work / "differ-layer"
    layer_dir.mkdir()
    fstest.apply(fstest.create_file("/from-differ", b"differ\n", 0o644))(layer_dir)
    subprocess.run(["mkfs.erofs", "--quiet", str(upper.parent / "layer.erofs"), str(layer_dir)], check=True,
                   capture_output=True)
    c.commit("differ", "unpack")
    with mounted(c.view("check", "differ"), env.work / "check") as target:
        fstest.check_directory_equal_with_applier(
            target, fstest.apply(LAYER_1, fstest.create_file("/from-differ", b"differ\n", 0o644)))
    c.remove("check")


def test_writable_root_holds_only_active_upper_dirs(env_with_writable_root) -> None:
    env, writable = env_with_writable_root
    c = env.client
    build_chain(env, LAYER_1)
    mounts = c.prepare("l2", "layer-0")
    upper = upper_of(mounts)
    assert writable in upper.parents and upper.stat().st_dev != env.root.stat().st_dev
    assert (upper.parent / ".erofslayer").exists()
    with mounted(mounts, env.work / "l2") as target:
        LAYER_2(target)
    c.commit("layer-1", "l2")
    c.cleanup()
    assert list((writable / "snapshots").iterdir()) == []
    assert list((writable / "trash").iterdir()) == []
    with mounted(c.view("check", "layer-1"), env.work / "check") as target:
        fstest.check_directory_equal_with_applier(target, fstest.apply(LAYER_1, LAYER_2))


def test_usage(env: Env) -> None:
    c = env.client
    mounts = c.prepare("active")
    with mounted(mounts, env.work / "a") as target:
        (target / "data").write_bytes(os.urandom(300_000))
        (target / "dir").mkdir()
        os.link(target / "data", target / "dir" / "hardlink")
    upper = upper_of(mounts)
    usage = c.usage("active")
    inodes = {os.lstat(p).st_ino: os.lstat(p).st_blocks * 512 for p in [upper, *upper.rglob("*")]}
    assert len(inodes) == 3  # the hard link counts once
    assert (usage.size, usage.inodes) == (sum(inodes.values()), len(inodes))

    c.commit("committed", "active")
    blob = upper.parent / "layer.erofs"
    with erofs_mount(str(blob)) as mnt:
        inodes = len({os.lstat(os.path.join(d, n)).st_ino for d, dirs, files in os.walk(mnt)
                      for n in [".", *files]})
    usage = c.usage("committed")
    assert (usage.size, usage.inodes) == (blob.stat().st_size, inodes)


def test_cleanup_deletes_what_no_record_owns(env: Env) -> None:
    c = env.client
    build_chain(env, LAYER_1)
    c.prepare("kept", "layer-0")
    snapshots = env.root / "snapshots"
    live = sorted(p.name for p in snapshots.iterdir())
    (snapshots / "999" / "fs").mkdir(parents=True)
    (snapshots / "new-half-made").mkdir()
    (snapshots / live[0] / ".layer.erofs.0123.tmp").write_bytes(b"partial")
    c.cleanup()
    assert sorted(p.name for p in snapshots.iterdir()) == live
    assert list(snapshots.glob("*/.*.tmp")) == []
    assert list((env.root / "trash").iterdir()) == []
    with mounted(c.mounts("kept"), env.work / "kept") as target:
        fstest.check_directory_equal_with_applier(target, LAYER_1)


def test_mode_is_visible_in_stat_labels(env: Env) -> None:
    c = env.client
    build_chain(env, LAYER_1)
    c.prepare("child", "layer-0", {"user": "label"})
    labels = dict(c.stat("child").labels)
    assert labels["user"] == "label"
    assert labels[MODE_LABEL] == env.mode
    assert labels[MODE_REASON_LABEL] == f"mode {env.mode} is configured"


def test_commit_can_rebase_a_parentless_snapshot(env: Env) -> None:
    """containerd 2.x unpacks layers in parallel without parents and names the parent on commit."""
    c = env.client
    build_chain(env, LAYER_1)
    layer = fstest.apply(fstest.create_dir("/etc", 0o755), fstest.create_file("/etc/motd", b"hello\n", 0o644))
    with mounted(c.prepare("unpacked-alone"), env.work / "alone") as target:
        layer(target)
    c.commit("rebased", "unpacked-alone", None, "layer-0")
    assert c.stat("rebased").parent == "layer-0"
    with mounted(c.view("check", "rebased"), env.work / "check") as target:
        fstest.check_directory_equal_with_applier(
            target, fstest.apply(LAYER_1, fstest.create_file("/etc/motd", b"hello\n", 0o644)))


@pytest.mark.parametrize("env", [mode_param("fuse")], indirect=True)
def test_a_stack_outlives_its_worker_and_keeper(env: Env) -> None:
    """A killed worker is replaced by its keeper on the same mount, so the snapshotter keeps that mount; so it
    does when the keeper dies (the worker serves on); only once both are dead is the chain mounted again."""
    c = env.client
    build_chain(env, LAYER_1, LAYER_2)
    prepared = c.prepare("container", "layer-1")
    with mounted(prepared, env.work / "container") as rootfs:
        ((stack, daemon),) = stack_daemons(env.root).items()
        (original,) = mounts_below(stack)
        os.kill(daemon.workers[0], signal.SIGKILL)
        assert wait_gone(list(daemon.workers))
        fstest.check_directory_equal_with_applier(rootfs, fstest.apply(LAYER_1, LAYER_2))  # the overlay reads on
        assert c.mounts("container") == prepared
        assert mounts_below(stack) == [original]
        replaced = stack_daemons(env.root)[stack]
        assert replaced.keeper == daemon.keeper and replaced.workers != daemon.workers

        os.kill(replaced.keeper, signal.SIGKILL)
        assert wait_gone([replaced.keeper])
        assert c.mounts("container") == prepared
        assert mounts_below(stack) == [original]  # left alone: it answers
        assert daemon_processes([stack])[stack] == DaemonProcesses(None, replaced.workers)
        fstest.check_directory_equal_with_applier(rootfs, fstest.apply(LAYER_1, LAYER_2))

    os.kill(replaced.workers[0], signal.SIGKILL)
    assert wait_gone(list(replaced.workers))
    with pytest.raises(OSError) as dead:
        os.statvfs(stack)
    assert dead.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    with mounted(c.mounts("container"), env.work / "container") as rootfs:
        fstest.check_directory_equal_with_applier(rootfs, fstest.apply(LAYER_1, LAYER_2))
        assert stack_daemons(env.root)[stack].keeper != replaced.keeper  # a new daemon serves the chain
    assert "mounting the chain again" in env.daemon.log.read_text()


def test_readahead_stops_promptly_even_with_a_full_queue(tmp_path: Path) -> None:
    """Leaving the read-ahead while its queue is full (nobody takes from it any more) must not leave the walker
    blocked: mkfs.erofs may fail at once on a huge directory."""
    class Unserved(Readahead):
        WORKERS = 0  # nothing empties the queue, as after the workers have stopped

    big = tmp_path / "big"
    big.mkdir()
    for i in range(10000):  # more than twice what the queue holds
        (big / f"f{i:05}").touch()
    readahead = Unserved(tmp_path)
    with readahead:
        deadline = time.monotonic() + 30
        while not readahead._paths.full():
            assert time.monotonic() < deadline
            time.sleep(0.01)
    [walker] = readahead._threads
    walker.join(timeout=5)
    assert not walker.is_alive()
