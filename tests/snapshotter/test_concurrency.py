"""100 Prepare/Commit/View/Remove calls at once from several gRPC clients: each succeeds or fails with the
code containerd expects, contested keys have exactly one winner, and afterwards records, directories, blobs
and mounts agree with nothing committed lost."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from tests.snapshotter.conftest import Env
from tests.snapshotter.consistency import ACTIVE, COMMITTED, check_consistent
from tests.snapshotter.daemon import Client
from tests.snapshotter.test_crashes import write_files
from tests.snapshotter.test_lifecycle import upper_of

OK = "OK"
CLIENTS = 4
LAYER_JOBS = 18  # 4 calls each
NEW_CHAIN_EVERY = 3  # views of every third new layer mount a new chain (an erofsfuse daemon in fuse mode)
RACERS = 4


@dataclass
class Calls:
    """Outcomes of the calls, by label: "OK" or the gRPC status code's name."""

    outcomes: dict[str, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def make(self, label: str, call: Callable, *args) -> str:
        try:
            call(*args)
            outcome = OK
        except grpc.RpcError as exc:
            outcome = exc.code().name
        with self.lock:
            self.outcomes.setdefault(label, []).append(outcome)
        return outcome

    def total(self) -> int:
        return sum(len(v) for v in self.outcomes.values())


def test_hundred_concurrent_calls_from_several_clients(env: Env) -> None:
    setup = env.client
    write_files(upper_of(setup.prepare("base-unpack")), {"/base": b"base\n"})
    setup.commit("base", "base-unpack")
    clients = [Client(env.daemon.address) for _ in range(CLIENTS)]
    calls = Calls()
    racing_commits = threading.Barrier(RACERS)
    committed_files = {"base": {"/base": b"base\n"}}
    still_active = {"contested"}

    def layer_job(i: int, c: Client) -> None:
        """Prepare on base, write, commit, view the new layer (or base), remove the view: all must succeed."""
        files = {f"/layer-{i}": f"layer {i}\n".encode()}
        committed_files[f"c{i}"] = files
        if calls.make("prepare", lambda: write_files(upper_of(c.prepare(f"a{i}", "base")), files)) != OK:
            return
        if calls.make("commit", c.commit, f"c{i}", f"a{i}") == OK:
            calls.make("view", c.view, f"v{i}", f"c{i}" if i % NEW_CHAIN_EVERY == 0 else "base")
            calls.make("remove view", c.remove, f"v{i}")

    def contested_prepare(c: Client) -> None:
        calls.make("contested prepare", c.prepare, "contested", "base")

    def contested_commit(j: int, c: Client) -> None:
        """Four actives committed to one name at the same moment."""
        files = {"/racer": f"racer {j}\n".encode()}
        calls.make("racer prepare", lambda: write_files(upper_of(c.prepare(f"r{j}", "base")), files))
        racing_commits.wait(timeout=60)
        if calls.make("racing commit", c.commit, "winner", f"r{j}") == OK:
            committed_files["winner"] = files
        else:
            still_active.add(f"r{j}")

    def commit_against_remove(k: int, c: Client, meeting: threading.Barrier) -> None:
        calls.make("prepare to commit", c.prepare, f"x{k}", "base")
        meeting.wait(timeout=60)
        if calls.make(f"commit x{k}", c.commit, f"xc{k}", f"x{k}") == OK:
            committed_files[f"xc{k}"] = {}

    def remove_against_commit(k: int, c: Client, meeting: threading.Barrier) -> None:
        meeting.wait(timeout=60)
        calls.make(f"remove x{k}", c.remove, f"x{k}")

    def remove_parent(c: Client) -> None:
        calls.make("remove parent", c.remove, "base")

    jobs: list[Callable[[Client], None]] = [lambda c, i=i: layer_job(i, c) for i in range(LAYER_JOBS)]
    jobs += [contested_prepare] * RACERS + [lambda c, j=j: contested_commit(j, c) for j in range(RACERS)]
    for k in range(RACERS):
        meeting = threading.Barrier(2)
        jobs += [lambda c, k=k, m=meeting: commit_against_remove(k, c, m),
                 lambda c, k=k, m=meeting: remove_against_commit(k, c, m)]
    jobs += [remove_parent] * RACERS
    threads = [threading.Thread(target=job, args=(clients[n % CLIENTS],)) for n, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for c in clients:
        c.close()
    assert not any(t.is_alive() for t in threads)
    assert calls.total() == 100

    outcomes = {label: Counter(v) for label, v in calls.outcomes.items()}
    for label in ("prepare", "commit", "view", "remove view", "racer prepare", "prepare to commit"):
        assert set(outcomes[label]) == {OK}, (label, outcomes[label])
    assert outcomes["contested prepare"] == {OK: 1, "ALREADY_EXISTS": RACERS - 1}
    assert outcomes["racing commit"] == {OK: 1, "ALREADY_EXISTS": RACERS - 1}
    assert outcomes["remove parent"] == {"FAILED_PRECONDITION": RACERS}
    for k in range(RACERS):  # one of the two wins; the other finds the key gone or being committed
        commit, remove = calls.outcomes[f"commit x{k}"][0], calls.outcomes[f"remove x{k}"][0]
        assert (commit, remove) in {(OK, "NOT_FOUND"), (OK, "FAILED_PRECONDITION"), ("NOT_FOUND", OK)}, k

    snapshots = check_consistent(env, committed_files)
    by_kind = {kind: {k for k, r in snapshots.items() if r.kind == kind} for kind in (COMMITTED, ACTIVE)}
    assert by_kind[COMMITTED] == set(committed_files)  # nothing answered as committed is lost
    assert by_kind[ACTIVE] == still_active  # the racers that lost stay active
    assert len(snapshots) == len(by_kind[COMMITTED]) + len(by_kind[ACTIVE])  # every view was removed
