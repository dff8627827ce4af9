"""Auto mode's choice between the kernel and erofsfuse, and the daemon's configuration file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from snapshotter import core
from snapshotter.errors import MountError
from snapshotter.idle import IdlePolicy
from snapshotter.layout import Layout
from snapshotter.metadata import Kind
from snapshotter.planner import MODE_LABEL, MODE_REASON_LABEL, Mode
from tests.snapshotter import fstest
from tests.snapshotter.conftest import erofsfuse_missing, start_env, stop_env
from tests.snapshotter.daemon import Client, SnapshotterProcess
from tests.snapshotter.test_lifecycle import LAYER_1, LAYER_2, build_chain, upper_of
from tests.snapshotter.test_testsuite import mounted

needs_erofsfuse = pytest.mark.skipif(erofsfuse_missing() is not None, reason=str(erofsfuse_missing()))


def test_auto_picks_the_kernel_where_it_can(tmp_path: Path) -> None:
    env = start_env(tmp_path / "t", "auto")
    try:
        build_chain(env, LAYER_1)
        mounts = env.client.prepare("child", "layer-0")
        labels = env.client.stat("child").labels
        assert (labels[MODE_LABEL], labels[MODE_REASON_LABEL]) == ("kernel", "the kernel mounts every layer")
        assert mounts[0].type == "overlay" and "/stack" not in mounts[0].options[-1]
        assert "auto" in env.daemon.log.read_text()
    finally:
        stop_env(env, tmp_path / "t")


@needs_erofsfuse
def test_auto_falls_back_to_fuse_when_the_kernel_refuses_a_layer(tmp_path: Path, monkeypatch) -> None:
    """The kernel on this host mounts every image mkfs.erofs makes, so its refusal of one layer is simulated."""
    snap = core.Snapshotter(Layout(tmp_path / "root"), Mode.AUTO, idle=IdlePolicy(seconds=0))  # stops unused daemons
    refused = []
    real_mount = core.mount_erofs

    def picky_kernel(blob: Path, target: Path) -> None:
        if blob.parent.name in refused:
            raise MountError(f"kernel refused layer {blob}: Invalid argument")
        real_mount(blob, target)

    monkeypatch.setattr(core, "mount_erofs", picky_kernel)
    try:
        for i, applier in enumerate((LAYER_1, LAYER_2)):
            mounts = snap.prepare(f"a{i}", f"c{i - 1}" if i else "", {})
            with mounted(mounts, tmp_path / f"a{i}") as target:
                applier(target)
            snap.commit(f"c{i}", f"a{i}", {})
        refused.append(str(snap.stat("c1").id))
        mounts = snap.view("v", "c1", {})
        info = snap.stat("v")
        assert info.mode == "fuse"
        assert info.labels[MODE_LABEL] == "fuse"
        assert info.labels[MODE_REASON_LABEL].startswith(f"kernel refused layer {tmp_path / 'root'}")
        assert mounts[0].source.endswith("/stack")
        with mounted(mounts, tmp_path / "v") as target:
            fstest.check_directory_equal_with_applier(target, fstest.apply(LAYER_1, LAYER_2))
        snap.remove("v")
        assert snap.daemons.running() == {}
        assert snap.stat("c0").kind is Kind.COMMITTED
        mounts = snap.view("v0", "c0", {})  # the other chain still goes to the kernel
        assert snap.stat("v0").mode == "kernel"
        snap.remove("v0")
    finally:
        snap.close()
        from tests.snapshotter.mounting import unmount_below
        unmount_below(tmp_path)


@needs_erofsfuse
@pytest.mark.skipif(not shutil.which("unshare") or not shutil.which("nsenter"), reason="util-linux unshare/nsenter")
def test_auto_uses_fuse_in_a_user_namespace(tmp_path: Path) -> None:
    """Run as root of a user namespace (rootless containerd's setting): erofs cannot be mounted there."""
    root, work = tmp_path / "root", tmp_path / "work"
    work.mkdir()
    daemon = SnapshotterProcess(root, tmp_path / "s.sock", "auto")
    userns = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
    daemon.prefix = userns
    daemon.start()
    client = Client(daemon.address)

    def inside(*cmd: str) -> str:
        return subprocess.run(["nsenter", "-t", str(daemon.proc.pid), "--user", "--mount", "--", *cmd],
                              check=True, capture_output=True, text=True).stdout

    try:
        upper = upper_of(client.prepare("base-a"))
        LAYER_1(upper)
        client.commit("base", "base-a")
        mounts = client.prepare("top", "base")
        labels = client.stat("top").labels
        assert labels[MODE_LABEL] == "fuse"
        assert "user namespace" in labels[MODE_REASON_LABEL]
        assert mounts[0].type == "overlay" and mounts[0].options[0] == "userxattr"
        target = work / "top"
        target.mkdir()
        inside("mount", "-t", "overlay", "overlay", "-o", ",".join(mounts[0].options), str(target))
        assert inside("cat", str(target / "etc/os-release")) == "NAME=test\n"
        inside("rm", str(target / "deleted"))
        inside("umount", str(target))
        client.commit("top-c", "top")
        view = client.view("check", "top-c")
        assert inside("ls", "-A", view[0].source).split() == ["etc", "opaque", "xattrs"]
        client.remove("check")
        client.remove("top-c")
        client.remove("base")
    finally:
        client.close()
        daemon.stop()
        shutil.rmtree(tmp_path, ignore_errors=True)


@needs_erofsfuse
def test_config_file_and_command_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    root, sock = tmp_path / "root", tmp_path / "run" / "snap.sock"
    config.write_text(f'root = "{root}"\naddress = "{sock}"\nmode = "fuse"\nlog_level = "debug"\n')
    daemon = SnapshotterProcess(root, sock, "unused")
    daemon.args = ["--config", str(config)]
    daemon.start()
    client = Client(sock)
    try:
        client.prepare("a")
        client.commit("c", "a")
        client.prepare("b", "c")
        assert sorted(i.name for i in client.walk()) == ["b", "c"]
        assert (root / "metadata.db").exists()
        daemon.args = ["--config", str(config), "--mode", "kernel"]
        daemon.restart()
        client.prepare("d", "c")
        assert client.stat("d").labels[MODE_REASON_LABEL] == "mode kernel is configured"
        assert client.stat("b").labels[MODE_REASON_LABEL] == "mode fuse is configured"
        assert client.mounts("b")[0].options[-1].endswith("/stack")  # a snapshot keeps its mode
    finally:
        client.close()
        daemon.stop()
        from tests.snapshotter.mounting import unmount_below
        unmount_below(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text('rooot = "/x"\n')
    proc = subprocess.run([*SnapshotterProcess.base_command(), "--config", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and "rooot" in proc.stderr
