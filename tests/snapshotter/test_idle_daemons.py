"""fuse mode with a real containerd: a chain's erofsfuse daemon outlives the container that started it, so the
next container on the image finds it running; it goes when its idle time is up, when idle daemons are too many
or hold too much memory, and with its image."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshotter.daemons import DaemonProcesses
from snapshotter.idle import MIB, IdlePolicy, IdleStack, judge_idle
from tests.fusemount import process_stat, wait_gone
from tests.snapshotter import containerd, oci
from tests.snapshotter.conftest import erofsfuse_missing
from tests.snapshotter.daemon import Client, SnapshotterProcess
from tests.snapshotter.test_containerd import running_stack, wait_for_reconnect
from tests.snapshotter.test_lifecycle import stack_daemons


def needs_containerd(test):
    for mark in (pytest.mark.skipif(containerd.available() is not None, reason=str(containerd.available())),
                 pytest.mark.skipif(not oci.BUSYBOX.is_file(), reason="needs a static busybox (busybox-static)"),
                 pytest.mark.skipif(erofsfuse_missing() is not None, reason=str(erofsfuse_missing()))):
        test = mark(test)
    return test


IDLE_LINE = re.compile(r"erofsfuse for chain (\d+) stays up idle")
STARTED_LINE = re.compile(r"started erofsfuse for chain (\d+)")


class Images:
    """Two images on the sample layers: ``full`` has all three, ``short`` the first two (another chain)."""

    def __init__(self, base: Path) -> None:
        tars = [layer.write(base / f"layer-{i}.tar") for i, layer in enumerate(oci.sample_layers())]
        self.full = oci.build_archive(base / "full.tar", tars, ["cat", "/data/keep.txt"], {"root": ""},
                                      "docker.io/library/erofs-idle-full")
        self.short = oci.build_archive(base / "short.tar", tars[:2], ["cat", "/data/keep.txt"], {"root": ""},
                                       "docker.io/library/erofs-idle-short")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Images:
    return Images(tmp_path_factory.mktemp("images"))


@pytest.fixture
def stack_with(tmp_path: Path) -> Iterator:
    """Starts containerd with a fuse-mode snapshotter given extra arguments; stops both at the end."""
    started = []

    def start(*extra: str) -> tuple[containerd.Containerd, SnapshotterProcess]:
        context = running_stack(tmp_path / "e2e", "fuse", *extra)
        started.append(context)
        return context.__enter__()

    yield start
    for context in started:
        context.__exit__(None, None, None)


def run_container(daemon: containerd.Containerd, image: oci.Image, name: str) -> None:
    """``ctr run --rm``: the container's snapshot goes when it exits (containerd's garbage collector removes it)."""
    out = daemon.ctr("run", "--rm", "--snapshotter", "erofs", image.refs["root"], name).stdout
    assert out == "version 2\n"


def log_of(snapshotter: SnapshotterProcess) -> str:
    return snapshotter.log.read_text()


def wait_logged(snapshotter: SnapshotterProcess, pattern: re.Pattern, count: int) -> list[str]:
    """Wait until ``pattern`` has matched ``count`` log lines (containerd removes snapshots in the background);
    returns what its group captured in each."""
    deadline = time.monotonic() + 60
    while len(found := pattern.findall(log_of(snapshotter))) < count:
        assert time.monotonic() < deadline, f"{pattern.pattern!r} logged {len(found)} times, not {count}"
        time.sleep(0.05)
    return found


def cpu_ticks(daemon: DaemonProcesses) -> int:
    """User and system CPU time of a daemon's keeper and worker, in clock ticks."""
    return sum(int(process_stat(pid)[11]) + int(process_stat(pid)[12]) for pid in (daemon.keeper, *daemon.workers))


def only_daemon(root: Path) -> tuple[Path, DaemonProcesses]:
    ((mountpoint, daemon),) = stack_daemons(root).items()
    return mountpoint, daemon


@needs_containerd
def test_an_idle_daemon_serves_the_next_container(stack_with, images: Images) -> None:
    """The daemon a container started stays up when it goes, idle (no CPU), through Cleanup (which containerd
    sends after every garbage collection) and a snapshotter restart (adopted), and the next container on the
    image uses it: the same processes, no second start."""
    daemon, snapshotter = stack_with()
    daemon.ctr("images", "import", "--snapshotter", "erofs", str(images.full.archive))
    assert stack_daemons(snapshotter.root) == {}  # unpacking: each chain's daemon gives way to the next one's

    run_container(daemon, images.full, "first")
    (chain,) = wait_logged(snapshotter, IDLE_LINE, 1)
    mountpoint, idle = only_daemon(snapshotter.root)
    assert mountpoint == snapshotter.root / "snapshots" / chain / "stack"
    ticks = cpu_ticks(idle)

    client = Client(snapshotter.address)
    try:
        client.cleanup()
    finally:
        client.close()
    snapshotter.restart()
    wait_for_reconnect(daemon)
    assert f"adopting erofsfuse for chain {chain} " in log_of(snapshotter)
    assert stack_daemons(snapshotter.root) == {mountpoint: idle}
    assert cpu_ticks(idle) == ticks

    run_container(daemon, images.full, "second")
    assert f"reusing idle erofsfuse for chain {chain} " in log_of(snapshotter)
    wait_logged(snapshotter, IDLE_LINE, 2)
    assert stack_daemons(snapshotter.root) == {mountpoint: idle}
    assert STARTED_LINE.findall(log_of(snapshotter)).count(chain) == 1


@needs_containerd
def test_an_idle_daemon_stops_when_its_time_is_up_even_across_a_restart(stack_with, images: Images
                                                                        ) -> None:
    seconds = 2
    daemon, snapshotter = stack_with("--fuse-idle-seconds", str(seconds))
    daemon.ctr("images", "import", "--snapshotter", "erofs", str(images.full.archive))
    run_container(daemon, images.full, "first")
    (chain,) = wait_logged(snapshotter, IDLE_LINE, 1)
    _, idle = only_daemon(snapshotter.root)
    assert wait_gone([idle.keeper, *idle.workers], timeout=60)
    assert re.search(rf"stopping erofsfuse for chain {chain}: idle for \d+s", log_of(snapshotter))

    run_container(daemon, images.full, "second")  # a new daemon, which goes idle while the snapshotter is down
    wait_logged(snapshotter, IDLE_LINE, 2)
    _, idle = only_daemon(snapshotter.root)
    snapshotter.stop()
    time.sleep(seconds + 1)
    assert stack_daemons(snapshotter.root) == {snapshotter.root / "snapshots" / chain / "stack": idle}
    before = len(log_of(snapshotter))
    snapshotter.start()  # the idle time counts from when the last container went, not from this start
    after_start = log_of(snapshotter)[before:]
    stopping = after_start.find(f"stopping erofsfuse for chain {chain}: idle for")
    assert 0 <= stopping < after_start.index("serving containerd.services.snapshots.v1.Snapshots")
    assert wait_gone([idle.keeper, *idle.workers])


@needs_containerd
def test_the_longest_idle_daemon_gives_way_to_the_caps(stack_with, images: Images) -> None:
    daemon, snapshotter = stack_with("--fuse-idle-max", "1")
    for image in (images.full, images.short):
        daemon.ctr("images", "import", "--snapshotter", "erofs", str(image.archive))
    run_container(daemon, images.full, "full")
    (full_chain,) = wait_logged(snapshotter, IDLE_LINE, 1)
    _, full = only_daemon(snapshotter.root)

    run_container(daemon, images.short, "short")
    short_chain = wait_logged(snapshotter, IDLE_LINE, 2)[1]
    assert short_chain != full_chain
    assert wait_gone([full.keeper, *full.workers])
    assert (f"stopping erofsfuse for chain {full_chain}: idle longest of 2 idle daemons (at most 1)"
            in log_of(snapshotter))
    mountpoint, short = only_daemon(snapshotter.root)
    assert mountpoint == snapshotter.root / "snapshots" / short_chain / "stack"

    snapshotter.args += ["--fuse-idle-memory-mib", "1"]  # less than any daemon holds
    snapshotter.restart()
    assert wait_gone([short.keeper, *short.workers])
    assert re.search(rf"stopping erofsfuse for chain {short_chain}: idle longest while idle daemons hold \d+ MiB "
                     r"\(at most 1 MiB\)", log_of(snapshotter))


@needs_containerd
def test_an_idle_daemon_goes_with_its_image(stack_with, images: Images) -> None:
    daemon, snapshotter = stack_with()
    daemon.ctr("images", "import", "--snapshotter", "erofs", str(images.full.archive))
    run_container(daemon, images.full, "first")
    (chain,) = wait_logged(snapshotter, IDLE_LINE, 1)
    _, idle = only_daemon(snapshotter.root)
    daemon.ctr("images", "rm", "--sync", images.full.refs["root"])
    assert wait_gone([idle.keeper, *idle.workers])
    assert f"stopping erofsfuse for chain {chain}: its top layer was removed" in log_of(snapshotter)


# The rules themselves, on made-up stacks: which stop, in which order, and when the timer wakes next.

POLICY = IdlePolicy(seconds=100, max_daemons=2, max_memory=300 * MIB)


def test_daemons_whose_time_is_up_stop_and_the_timer_wakes_for_the_next() -> None:
    verdict = judge_idle([IdleStack(1, since=0, memory=MIB), IdleStack(2, since=50, memory=MIB)], POLICY, now=100)
    assert list(verdict.stop) == [1]
    assert verdict.next_expiry == 150


def test_the_longest_idle_stop_first_beyond_the_count_and_memory_caps() -> None:
    stacks = [IdleStack(top, since=since, memory=memory) for top, since, memory in
              [(7, 30, 100 * MIB), (3, 10, 100 * MIB), (9, 20, 100 * MIB), (4, 40, 250 * MIB)]]
    verdict = judge_idle(stacks, POLICY, now=60)
    assert list(verdict.stop) == [3, 9, 7]  # two over the count, then 350 MiB over the 300 MiB
    assert verdict.next_expiry == 140


def test_no_idle_time_stops_every_unused_daemon() -> None:
    for policy in (IdlePolicy(seconds=0), IdlePolicy(max_daemons=0), IdlePolicy(max_memory=0)):
        verdict = judge_idle([IdleStack(5, since=10, memory=MIB)], policy, now=10)
        assert verdict.stop == {5: "no snapshot uses it"} and verdict.next_expiry is None
