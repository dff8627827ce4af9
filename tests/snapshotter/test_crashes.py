"""Crash safety: the snapshotter killed with SIGKILL (or failing) at every step of Prepare, Commit and
Remove, then started again: the request happened completely or not at all, records, directories, blobs and
mounts agree, no half-written layer is ever used, and the request can be made again."""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from snapshotter.faults import ENV, POINTS
from tests.snapshotter.conftest import Env, mode_param, start_env, stop_env
from tests.snapshotter.consistency import check_consistent, check_trash_empty, records
from tests.snapshotter.mounting import unmount_below
from tests.snapshotter.test_lifecycle import upper_of
from tests.snapshotter.test_testsuite import code_of, mounted

LAYERS = {  # committed layers, each unpacked alone and rebased on the one before, as containerd 2.x unpacks
    "base": {"/base": b"bottom layer\n", "/etc/os-release": b"NAME=crash\n"},
    "mid": {"/mid": b"middle layer\n"},
    "top": {"/top": b"top layer\n"},
}
UPPER = {"/upper": b"written in the active snapshot\n", "/dir/nested": b"nested\n"}
OPERATIONS: dict[str, Callable] = {
    "create": lambda c: c.prepare("new", "top"),  # mounts a chain nothing used before
    "commit": lambda c: c.commit("layer", "upper"),  # its chain is unused afterwards
    "remove": lambda c: c.remove("victim"),  # the only user of its chain
}
AFTER_THE_RECORD = {"create:recorded", "commit:recorded", "commit:placed", "commit:upper-retired",
                    "remove:deleted", "remove:unmounted", "remove:discarded"}
BEFORE_THE_RECORD = [p for p in POINTS if p not in AFTER_THE_RECORD]


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def populate(env: Env) -> None:
    """base <- mid <- top committed; "upper" active on mid with files; "victim" a view of base."""
    c = env.client
    parent = ""
    for name, files in LAYERS.items():
        write_files(upper_of(c.prepare(f"{name}-unpack")), files)
        c.commit(name, f"{name}-unpack", None, parent)
        parent = name
    write_files(upper_of(c.prepare("upper", "mid")), UPPER)
    c.view("victim", "base")


def outcome(env: Env, operation: str) -> bool:
    """Whether the operation took effect, checking that it did so completely or not at all."""
    snapshots = records(env)
    if operation == "create":
        return "new" in snapshots
    if operation == "commit":
        assert ("layer" in snapshots) != ("upper" in snapshots), sorted(snapshots)
        return "layer" in snapshots
    return "victim" not in snapshots


# After each operation, a snapshot whose mounts show its result (a view made on the given parent, or the new
# snapshot itself), and the layers they must show, bottom first.
RESULTS = {
    "create": ("new", None, ["base", "mid", "top"]),
    "commit": ("check", "layer", ["base", "mid", "layer"]),
    "remove": ("check", "base", ["base"]),
}


def finish(env: Env, operation: str) -> None:
    """Make the interrupted request again if it did not happen, then check the result through the mounts."""
    c = env.client
    if not outcome(env, operation):
        OPERATIONS[operation](c)
    layers = {**LAYERS, "layer": UPPER}
    check_consistent(env, layers)
    c.cleanup()
    check_trash_empty(env)
    check_consistent(env, layers)
    key, view_parent, shown = RESULTS[operation]
    if view_parent:
        c.view(key, view_parent)
    with mounted(c.mounts(key), env.work / key) as target:
        seen = {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert seen == {name.lstrip("/"): data for layer in shown for name, data in layers[layer].items()}


def restart_clean(env: Env) -> None:
    env.daemon.environment = {}
    env.daemon.start()
    env.client.wait_ready()


def mkfs_running_under(root: Path) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes()
            if b"mkfs.erofs" in args and str(root).encode() in args:
                return True
    return False


def wait_for_orphans(env: Env) -> None:
    """A mkfs.erofs started by the killed snapshotter runs to its end: wait, so that the start that follows
    finds (and deletes) its temporary file."""
    deadline = time.monotonic() + 30
    while mkfs_running_under(env.root):
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> Iterator[Callable[[str], Path]]:
    """A populated root per mode, made once and copied for each case (its mounts are made again at start)."""
    made: dict[str, Path] = {}

    def template(mode: str) -> Path:
        if mode not in made:
            base = tmp_path_factory.mktemp(f"template-{mode}")
            env = start_env(base, mode)
            populate(env)
            env.client.close()
            env.daemon.stop()
            unmount_below(base)
            made[mode] = env.root
        return made[mode]

    yield template


@contextlib.contextmanager
def started_from(template: Path, base: Path, mode: str, fault: str) -> Iterator[Env]:
    shutil.copytree(template, base / "root", symlinks=True)
    env = start_env(base, mode, environment={ENV: fault})
    try:
        yield env
    finally:
        stop_env(env, base)


def case(mode: str, point: str):
    return pytest.param(mode, point, marks=mode_param(mode).marks, id=f"{mode}-{point}")


# Every point in kernel mode; in fuse mode the ones that leave an erofsfuse daemon without a user.
KILL_CASES = [case("kernel", p) for p in POINTS] + \
    [case("fuse", p) for p in ("create:mounted", "commit:placed", "remove:deleted")]
FAIL_CASES = [case("kernel", p) for p in BEFORE_THE_RECORD] + [case("fuse", "create:mounted")]


@pytest.mark.parametrize(("mode", "point"), KILL_CASES)
def test_killed_at_every_step(templates, tmp_path: Path, mode: str, point: str) -> None:
    operation = point.partition(":")[0]
    with started_from(templates(mode), tmp_path / "t", mode, point) as env:
        with pytest.raises(grpc.RpcError):
            OPERATIONS[operation](env.client)
        assert env.daemon.wait_killed() == -signal.SIGKILL
        assert f"fault injected at {point}" in env.daemon.log.read_text()
        wait_for_orphans(env)
        restart_clean(env)
        check_consistent(env, {**LAYERS, "layer": UPPER})
        assert outcome(env, operation) == (point in AFTER_THE_RECORD)
        finish(env, operation)


@pytest.mark.parametrize(("mode", "point"), FAIL_CASES)
def test_a_request_failing_at_any_step_leaves_nothing(templates, tmp_path: Path, mode: str, point: str) -> None:
    """An error (a full disk, mkfs.erofs failing) after directories, mounts or blobs were made: the request
    fails as INTERNAL and everything it made is gone."""
    operation = point.partition(":")[0]
    with started_from(templates(mode), tmp_path / "t", mode, f"{point}:fail") as env:
        before = records(env)
        assert code_of(OPERATIONS[operation], env.client) == grpc.StatusCode.INTERNAL
        assert records(env) == before
        env.client.cleanup()
        check_consistent(env, {**LAYERS, "layer": UPPER})
        check_trash_empty(env)
        env.daemon.stop()
        restart_clean(env)
        finish(env, operation)


class Workload(threading.Thread):
    """Prepare, write, View, Commit, Remove in a loop; pauses on request so the state can be checked."""

    def __init__(self, env: Env, rng: random.Random, tag: str) -> None:
        super().__init__(name="workload")
        self.env, self.rng, self.tag = env, rng, tag
        self.committed: dict[str, dict[str, bytes]] = {}  # commits that were answered, with their files
        self.running, self.idle, self.done = threading.Event(), threading.Event(), threading.Event()
        self.running.set()

    def pause(self) -> None:
        self.running.clear()
        assert self.idle.wait(30)

    def run(self) -> None:
        c, i = self.env.client, 0
        while not self.done.is_set():
            if not self.running.is_set():
                self.idle.set()
                self.running.wait(0.1)
                continue
            self.idle.clear()
            i += 1
            files = {f"/file-{i}": f"{self.tag} {i}\n".encode()}
            try:
                write_files(upper_of(c.prepare(f"a{i}", "")), files)
                if self.committed:
                    c.view(f"v{i}", self.rng.choice(sorted(self.committed)))
                c.commit(f"c{i}", f"a{i}")
                self.committed[f"c{i}"] = files
                if i % 3 == 0 and len(self.committed) > 1:
                    c.remove(f"v{i}")
            except grpc.RpcError:
                time.sleep(0.02)  # the snapshotter is down


@pytest.mark.parametrize("env", [mode_param("kernel")], indirect=True)
def test_killed_at_random_moments(env: Env) -> None:
    """A stream of Prepare/View/Commit/Remove with SIGKILLs at random moments: after each restart everything
    agrees, and every commit that was answered is there with its files."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    workload = Workload(env, rng, str(seed))
    workload.start()
    try:
        for _ in range(4):
            time.sleep(rng.uniform(0.2, 1.0))
            env.daemon.kill()
            workload.pause()
            wait_for_orphans(env)
            restart_clean(env)
            snapshots = check_consistent(env, dict(workload.committed))
            assert set(workload.committed) <= set(snapshots), f"seed {seed}: answered commits were lost"
            workload.running.set()
    finally:
        workload.done.set()
        workload.running.set()
        workload.join()
    assert len(workload.committed) > 4, f"seed {seed}: too little progress to mean anything"
