"""End to end with a real containerd: import a locally built image through the snapshotter, restart the
snapshotter, run containers, and compare everything with containerd's own overlayfs snapshotter."""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshotter.planner import MODE_LABEL
from tests.snapshotter import containerd, fstest, oci
from tests.snapshotter.conftest import mode_param
from tests.snapshotter.daemon import Client, SnapshotterProcess
from tests.snapshotter.mounting import mount_one, unmount_all, unmount_below

pytestmark = [
    pytest.mark.skipif(containerd.available() is not None, reason=str(containerd.available())),
    pytest.mark.skipif(not oci.BUSYBOX.is_file(), reason="needs a static busybox (Debian: busybox-static)"),
]

# Prints what a program in the container sees: identity, every path with type, mode and owner (plus size,
# links, mtime and link target for non-directories, whose sizes are filesystem-specific), file contents,
# and the effect of writing and deleting in the container's rootfs.
SCRIPT = r"""exec 2>&1
id
find / -xdev \( -path /proc -o -path /sys -o -path /dev \) -prune -o -print 2>&1 | sort | while read -r f; do
  if [ -d "$f" ] && [ ! -L "$f" ]; then stat -c '%n %A %u:%g' "$f"; else stat -c '%n %A %u:%g %s %h %Y %N' "$f"; fi
done
for f in /data/* /opaque/* /opaque/sub/* /xattr-file /root/secret /home/user/notes /setuid; do
  echo "== $f"; cat "$f"
done
sha256sum /bin/busybox
echo written > /written && cat /written
rm /data/keep.txt && ls /data
rm -r /opaque/sub && ls -a /opaque
exit 0
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> oci.Image:
    base = tmp_path_factory.mktemp("image")
    layers = [layer.write(base / f"layer-{i}.tar") for i, layer in enumerate(oci.sample_layers())]
    return oci.build_archive(base / "image.tar", layers, ["/bin/sh", "-c", SCRIPT], {"root": "", "user": "1000:1000"})


@pytest.fixture(params=[mode_param("kernel"), mode_param("fuse")])
def stack(request, tmp_path: Path) -> Iterator[tuple[containerd.Containerd, SnapshotterProcess, str]]:
    base = tmp_path / "e2e"
    base.mkdir()
    snapshotter = SnapshotterProcess(base / "snapshotter", base / "snapshotter.sock", request.param)
    snapshotter.start()
    daemon = containerd.Containerd(base, snapshotter.address)
    try:
        daemon.start()
        yield daemon, snapshotter, request.param
    finally:
        daemon.stop()
        snapshotter.stop()
        unmount_below(base)


def wait_for_reconnect(daemon: containerd.Containerd) -> None:
    """containerd redials a restarted proxy plugin with a backoff of about a second; calls in between fail
    with Unavailable, as they would for any restarted gRPC server."""
    deadline = time.monotonic() + 30
    while daemon.ctr("snapshots", "--snapshotter", "erofs", "ls", check=False).returncode != 0:
        assert time.monotonic() < deadline, "containerd did not reconnect to the restarted snapshotter"
        time.sleep(0.2)


def run(daemon: containerd.Containerd, snapshotter_name: str, ref: str, name: str) -> str:
    out = daemon.ctr("run", "--rm", "--snapshotter", snapshotter_name, ref, name).stdout
    assert out, f"no output from {name}"
    return out


def mount_rootfs(daemon: containerd.Containerd, snapshotter_name: str, ref: str, target: Path) -> str:
    """Create (not start) a container and mount its rootfs on the host as ctr says to; returns its id.

    A container keeps its snapshot from containerd's garbage collector, which also removes snapshots of
    the proxy snapshotter that containerd has no record of.
    """
    container = f"rootfs-{snapshotter_name}"
    daemon.ctr("containers", "create", "--snapshotter", snapshotter_name, ref, container)
    command = shlex.split(daemon.ctr("snapshots", "--snapshotter", snapshotter_name, "mounts", str(target),
                                     container).stdout)
    assert command[:2] == ["mount", "-t"], command
    target.mkdir()
    mount_one(command[2], command[3], command[command.index("-o") + 1].split(","), target)
    return container


def test_containers_see_what_overlayfs_shows(stack, image: oci.Image, tmp_path: Path) -> None:
    daemon, snapshotter, mode = stack
    for name in ("overlayfs", "erofs"):
        out = daemon.ctr("images", "import", "--snapshotter", name, str(image.archive)).stdout
        assert out.count("done") == len(image.refs), out
    snapshotter.restart()  # containerd keeps its records; ours must match them after a restart
    wait_for_reconnect(daemon)

    for user, ref in image.refs.items():
        expected = run(daemon, "overlayfs", ref, f"overlay-{user}")
        actual = run(daemon, "erofs", ref, f"erofs-{user}")
        assert actual == expected, user
        assert ("uid=1000(user)" if user == "user" else "uid=0(root)") in actual
        assert "only this survives" in actual and "hidden by opaque" not in actual

    rootfs = {name: tmp_path / f"rootfs-{name}" for name in ("overlayfs", "erofs")}
    try:
        for name, target in rootfs.items():
            mount_rootfs(daemon, name, image.refs["root"], target)
        fstest.check_directory_equal(rootfs["overlayfs"], rootfs["erofs"])  # xattrs and owners included
        assert os.getxattr(rootfs["erofs"] / "xattr-file", "user.color") == b"green"

        # The container's snapshot is ours, served in the mode the daemon was told to use.
        client = Client(snapshotter.address)
        try:
            (active,) = [i for i in client.walk("kind==active") if i.name.endswith("/rootfs-erofs")]
            assert active.parent.endswith(image.chain_id)
            assert active.labels[MODE_LABEL] == mode
        finally:
            client.close()
    finally:
        for name, target in rootfs.items():
            unmount_all(target)
            daemon.ctr("containers", "rm", f"rootfs-{name}", check=False)
