"""The project's mount helper against the kernel: EROFS images the kernel will not read as files go through
loop devices that leave with the mount, and overlay options of any length mount."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from erofsfuse.host.mountinfo import mount_table
from erofsfuse.host.mounting import MS_RDONLY, PAGE_SIZE, MountError, mount, mount_erofs, unmount

from . import corpus
from .cli import tmpfs
from .trees import describe_path, diff_trees

pytestmark = pytest.mark.root


def loops_backed_by(files: list[Path]) -> dict[Path, str]:
    """The loop devices that show any of ``files``, by the file (as the kernel reports it in sysfs)."""
    wanted = {str(f) for f in files}
    found = {}
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            name = backing.read_text().strip()
        except OSError:  # detached meanwhile
            continue
        if name in wanted:
            found[Path(name)] = backing.parent.parent.name
    return found


def wait_for_no_loops(files: list[Path], timeout: float = 10.0) -> dict[Path, str]:
    deadline = time.monotonic() + timeout
    while (left := loops_backed_by(files)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


@pytest.mark.parametrize("name", ["plain", "blobdev"])
def test_erofs_image_on_tmpfs_mounts_through_loop_devices_that_leave_with_the_mount(tmp_path, name):
    with tmpfs(tmp_path / "tmpfs", size="256m") as fs:
        image = Path(shutil.copy(corpus.image_path(name), fs))
        devices = [Path(shutil.copy(d, fs)) for d in corpus.device_paths(name)]
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        try:
            mount(image, mnt, "erofs", MS_RDONLY, [f"device={d}" for d in devices])
        except MountError as exc:
            assert exc.errno == errno.ENOTBLK, exc
        else:
            unmount(mnt)
            pytest.skip("this kernel reads EROFS images on tmpfs as files: no loop device is needed")

        mount_erofs(image, mnt, devices)
        try:
            loops = loops_backed_by([image, *devices])
            assert set(loops) == {image, *devices}
            for loop in loops.values():
                assert Path(f"/sys/block/{loop}/ro").read_text().strip() == "1"
                assert Path(f"/sys/block/{loop}/loop/autoclear").read_text().strip() == "1"
            (mounted,) = [m for m in mount_table() if m.target == mnt]
            assert (mounted.fstype, mounted.source) == ("erofs", f"/dev/{loops[image]}")
            problems = diff_trees(corpus.manifest(name)["entries"], describe_path(str(mnt)))
            assert not problems, "\n".join(problems)
        finally:
            unmount(mnt)
        assert not wait_for_no_loops([image, *devices])


def test_image_the_kernel_refuses_leaves_no_loop_device(tmp_path):
    with tmpfs(tmp_path / "tmpfs", size="16m") as fs:
        junk = Path(fs) / "junk.erofs"
        junk.write_bytes(bytes(1 << 20))
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        with pytest.raises(MountError) as refused:
            mount_erofs(junk, mnt)
        assert refused.value.errno == errno.EINVAL
        assert str(junk) in str(refused.value)
        assert not any(m.target == mnt for m in mount_table())
        assert not wait_for_no_loops([junk])


def make_layers(base: Path, count: int, name_length: int) -> list[Path]:
    """``count`` overlay lower layers (bottom first) with names ``name_length`` long: each overwrites a
    file, adds its own, deletes the one below it with a whiteout and adds to a shared directory; the top
    one makes that directory opaque."""
    layers = []
    for i in range(count):
        layer = base / f"{i:03d}".ljust(name_length, "-")
        (layer / "shared").mkdir(parents=True)
        (layer / "common").write_text(f"layer {i}\n")
        (layer / f"only-{i}").write_text(f"only in {i}\n")
        (layer / "shared" / f"from-{i}").write_text(f"{i}\n")
        if i:
            os.mknod(layer / f"only-{i - 1}", stat.S_IFCHR | 0o600, 0)
        layers.append(layer)
    os.setxattr(layers[-1] / "shared", "trusted.overlay.opaque", b"y")
    return layers


@pytest.mark.parametrize(("count", "name_length", "longer_than"), [(4, 64, 256), (40, 100, PAGE_SIZE)],
                         ids=["lowerdir-over-256-bytes", "lowerdir-over-a-page"])
def test_overlay_with_a_long_lowerdir_shows_what_short_paths_to_the_same_layers_show(tmp_path, count, name_length,
                                                                                      longer_than):
    layers = make_layers(tmp_path / "layers", count, name_length)
    lowerdir = "lowerdir=" + ":".join(str(layer) for layer in reversed(layers))
    assert len(lowerdir) > longer_than
    short = Path("/tmp") / f"ovl-{os.getpid()}"  # short paths to the same layers: the kernel follows the links
    short.mkdir()
    try:
        for i, layer in enumerate(layers):
            (short / str(i)).symlink_to(layer)
        short_lowerdir = "lowerdir=" + ":".join(str(short / str(i)) for i in reversed(range(count)))
        assert len(short_lowerdir) < PAGE_SIZE  # one mount(2), as any mount(8) would make it
        views = {}
        for kind, option in (("long", lowerdir), ("short", short_lowerdir)):
            mnt = tmp_path / kind
            mnt.mkdir()
            mount("overlay", mnt, "overlay", MS_RDONLY, [option])
            try:
                (mounted,) = [m for m in mount_table() if m.target == mnt]
                assert "ro" in mounted.options
                views[kind] = describe_path(str(mnt))
            finally:
                unmount(mnt)
    finally:
        shutil.rmtree(short)
    problems = diff_trees(views["short"], views["long"])
    assert not problems, "\n".join(problems)
