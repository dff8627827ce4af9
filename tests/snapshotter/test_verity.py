"""The snapshotter's verity setting: a dm-verity tree per committed layer, checked by erofsfuse in fuse mode.

veritysetup (userspace here) is the oracle: it must accept each layer's blob, tree and labelled root hash.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from snapshotter import core
from snapshotter.errors import FailedPrecondition
from snapshotter.idle import IdlePolicy
from snapshotter.layout import Layout
from snapshotter.planner import VERIFIED_LABEL, VERITY_LABEL, Mode, Verity
from snapshotter.settings import parse_settings
from tests.snapshotter import fstest
from tests.snapshotter.conftest import erofsfuse_missing
from tests.snapshotter.mounting import unmount_below
from tests.snapshotter.test_lifecycle import LAYER_1, LAYER_2
from tests.snapshotter.test_testsuite import mounted

pytestmark = [pytest.mark.skipif(erofsfuse_missing() is not None, reason=str(erofsfuse_missing())),
              pytest.mark.skipif(not shutil.which("veritysetup"), reason="needs veritysetup (cryptsetup-bin)")]

BIG = os.urandom(64 << 10)
WITH_BIG = fstest.apply(LAYER_2, fstest.create_file("/big", BIG, 0o644))


def commit_chain(snap: core.Snapshotter, work: Path, appliers) -> None:
    """Committed snapshots c0 <- c1 <- ... made by the appliers."""
    for i, applier in enumerate(appliers):
        with mounted(snap.prepare(f"a{i}", f"c{i - 1}" if i else "", {}), work / f"a{i}") as target:
            applier(target)
        snap.commit(f"c{i}", f"a{i}", {"client": "label"})


def veritysetup_accepts(blob: Path, tree: Path, root: str) -> bool:
    return subprocess.run(["veritysetup", "verify", str(blob), str(tree), root], capture_output=True).returncode == 0


def test_fuse_mode_serves_the_layers_verified(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "root")
    snap = core.Snapshotter(layout, Mode.FUSE, idle=IdlePolicy(seconds=0), verity=Verity.ON)
    try:
        commit_chain(snap, tmp_path, (LAYER_1, WITH_BIG))
        for name in ("c0", "c1"):
            info = snap.stat(name)
            root = info.labels[VERITY_LABEL]
            assert info.verity == root and info.labels["client"] == "label"
            assert veritysetup_accepts(layout.blob(info.id), layout.verity_tree(info.id), root)
        mounts = snap.view("v", "c1", {})
        assert snap.stat("v").labels[VERIFIED_LABEL].startswith("yes:")
        with mounted(mounts, tmp_path / "v") as target:
            fstest.check_directory_equal_with_applier(target, fstest.apply(LAYER_1, WITH_BIG))
        stack = layout.stack_file(snap.stat("c1").id).read_text()
        assert snap.stat("c0").verity in stack and snap.stat("c1").verity in stack
        snap.remove("v")

        # a byte of /big changed in the top layer's blob: the container's read of that file fails, others work
        blob = layout.blob(snap.stat("c1").id)
        data = blob.read_bytes()
        at = data.index(BIG[4096:4160]) + 10
        with open(blob, "r+b") as f:
            f.seek(at)
            f.write(bytes([data[at] ^ 1]))
        with mounted(snap.prepare("container", "c1", {}), tmp_path / "container") as rootfs:
            with pytest.raises(OSError) as caught:
                (rootfs / "big").read_bytes()
            assert caught.value.errno == errno.EIO
            assert (rootfs / "etc" / "os-release").read_bytes() == b"NAME=test\n"
        snap.remove("container")
    finally:
        snap.close()
        unmount_below(tmp_path)


def test_kernel_mode_mounts_unchecked_and_says_so(tmp_path: Path) -> None:
    snap = core.Snapshotter(Layout(tmp_path / "root"), Mode.KERNEL, verity=Verity.ON)
    try:
        commit_chain(snap, tmp_path, (LAYER_1,))
        assert VERITY_LABEL in snap.stat("c0").labels
        with mounted(snap.view("v", "c0", {}), tmp_path / "v") as target:
            fstest.check_directory_equal_with_applier(target, LAYER_1)
        assert snap.stat("v").labels[VERIFIED_LABEL].startswith("no: kernel mode")
        snap.remove("v")
    finally:
        snap.close()
        unmount_below(tmp_path)


def test_required_serves_in_fuse_mode_and_refuses_layers_without_a_tree(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "root")
    snap = core.Snapshotter(layout, Mode.AUTO, idle=IdlePolicy(seconds=0))
    try:
        commit_chain(snap, tmp_path, (LAYER_1,))  # before verity: no tree
    finally:
        snap.close()
    snap = core.Snapshotter(layout, Mode.AUTO, idle=IdlePolicy(seconds=0), verity=Verity.REQUIRED)
    try:
        with pytest.raises(FailedPrecondition, match="has no hash tree"):
            snap.view("old", "c0", {})
        with mounted(snap.prepare("a1", "", {}), tmp_path / "a1") as target:
            LAYER_1(target)
        snap.commit("c1", "a1", {})
        snap.view("v", "c1", {})
        assert snap.stat("v").mode == "fuse" and snap.stat("v").labels[VERIFIED_LABEL].startswith("yes:")
        snap.remove("v")
    finally:
        snap.close()
        unmount_below(tmp_path)


def test_the_setting(tmp_path: Path) -> None:
    assert parse_settings([])["verity"] == "off"
    assert parse_settings(["--verity", "on"])["verity"] == "on"
    config = tmp_path / "config.toml"
    config.write_text('verity = "required"\nmode = "kernel"\n')
    with pytest.raises(SystemExit):
        parse_settings(["--config", str(config)])
    config.write_text('verity = "sometimes"\n')
    with pytest.raises(SystemExit):
        parse_settings(["--config", str(config)])
