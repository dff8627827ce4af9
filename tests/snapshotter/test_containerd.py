"""End to end with a real containerd: import a locally built image through the snapshotter, restart the
snapshotter, run containers, and compare everything with containerd's own overlayfs snapshotter."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshotter.planner import MODE_LABEL
from tests.fusemount import wait_gone
from tests.snapshotter import containerd, fstest, oci
from tests.snapshotter.conftest import erofsfuse_missing, mode_param
from tests.snapshotter.daemon import Client, SnapshotterProcess
from tests.snapshotter.mounting import mount_one, mounts_below, unmount_all, unmount_below
from tests.snapshotter.test_lifecycle import stack_daemons, upper_of

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


@contextlib.contextmanager
def running_stack(base: Path, mode: str, *extra: str) -> Iterator[tuple[containerd.Containerd, SnapshotterProcess]]:
    """containerd with the snapshotter (given ``extra`` arguments) as its "erofs" proxy plugin."""
    base.mkdir()
    snapshotter = SnapshotterProcess(base / "snapshotter", base / "snapshotter.sock", mode, *extra)
    snapshotter.start()
    daemon = containerd.Containerd(base, snapshotter.address)
    try:
        daemon.start()
        yield daemon, snapshotter
    finally:
        daemon.stop()
        snapshotter.stop()
        unmount_below(base)


@pytest.fixture(params=[mode_param("kernel"), mode_param("fuse")])
def stack(request, tmp_path: Path) -> Iterator[tuple[containerd.Containerd, SnapshotterProcess, str]]:
    with running_stack(tmp_path / "e2e", request.param) as (daemon, snapshotter):
        yield daemon, snapshotter, request.param


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


# Reads files of every layer every 100 ms, each time also looking up a name never looked up before (so the
# lookup reaches the erofsfuse daemon, past every cache), and appends what it saw to /reads in its upper dir.
READER = r"""i=0
while :; do
  i=$((i+1))
  echo "$i|$(cat /data/keep.txt 2>&1)|$(cat /opaque/new.txt 2>&1)|$(ls /data/probe-$i 2>&1)" >> /reads
  sleep 0.1
done
"""


class Reads:
    """What the reader container saw, from its upper dir on the host."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.first = self.wait_for(1)[0]
        # e.g. "1|version 2|only this survives|ls: /data/probe-1: No such file or directory"
        assert "version 2" in self.first and "only this survives" in self.first, self.first

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []

    def wait_for(self, count: int) -> list[str]:
        deadline = time.monotonic() + 60
        while len(lines := self.lines()) < count:
            assert time.monotonic() < deadline, f"the container stopped reading: {lines[-3:]}"
            time.sleep(0.05)
        return lines

    def check_more(self, count: int = 10) -> None:
        """``count`` more reads happen, and every read so far saw exactly what the first one saw."""
        lines = self.wait_for(len(self.lines()) + count)
        _, *files, probe = self.first.split("|")
        expected = ["|".join([str(i), *files, probe.replace("probe-1:", f"probe-{i}:")])
                    for i in range(1, len(lines) + 1)]
        wrong = [(seen, want) for seen, want in zip(lines, expected, strict=True) if seen != want]
        assert not wrong, wrong[:5]


@pytest.mark.skipif(erofsfuse_missing() is not None, reason=str(erofsfuse_missing()))
def test_a_running_container_outlives_restarts_and_a_killed_daemon(image: oci.Image, tmp_path: Path) -> None:
    """fuse mode: a container keeps reading its files while the snapshotter is stopped, killed with SIGKILL
    and started again (it adopts the mounts as they are), and while the erofsfuse worker serving its layers
    is killed with SIGKILL (the keeper resumes the same connection in a new worker)."""
    with running_stack(tmp_path / "e2e", "fuse") as (daemon, snapshotter):
        daemon.ctr("images", "import", "--snapshotter", "erofs", str(image.archive))
        daemon.ctr("run", "-d", "--snapshotter", "erofs", image.refs["root"], "reader", "sh", "-c", READER)
        try:
            client = Client(snapshotter.address)
            (active,) = [i for i in client.walk("kind==active") if i.name.endswith("/reader")]
            reads = Reads(upper_of(client.mounts(active.name)) / "reads")
            client.close()
            mounts, daemons = mounts_below(snapshotter.root), stack_daemons(snapshotter.root)
            ((stack_dir, serving),) = daemons.items()

            for stop in (snapshotter.stop, snapshotter.kill):
                stop()
                reads.check_more(5)  # no snapshotter at all
                snapshotter.start()
                wait_for_reconnect(daemon)
                reads.check_more()
                assert mounts_below(snapshotter.root) == mounts  # adopted, nothing mounted again
                assert stack_daemons(snapshotter.root) == daemons
            assert "adopting erofsfuse for chain" in snapshotter.log.read_text()

            os.kill(serving.workers[0], signal.SIGKILL)
            assert wait_gone(list(serving.workers))
            reads.check_more()
            resumed = stack_daemons(snapshotter.root)[stack_dir]
            assert resumed.keeper == serving.keeper and resumed.workers != serving.workers
            assert mounts_below(snapshotter.root) == mounts
            exec_out = daemon.ctr("task", "exec", "--exec-id", "probe", "reader", "cat", "/data/added.txt").stdout
            assert exec_out == "added in layer 2\n"  # new processes start in the container too
        finally:
            daemon.ctr("task", "delete", "--force", "reader", check=False)
            daemon.ctr("containers", "rm", "reader", check=False)
