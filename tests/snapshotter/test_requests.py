"""Bad requests get containerd's error codes and leave nothing behind; keys are data, never paths."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from snapshotter.proto_gen.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from tests.snapshotter.conftest import Env
from tests.snapshotter.mounting import mounts_below
from tests.snapshotter.test_testsuite import code_of, mounted

NOT_FOUND = grpc.StatusCode.NOT_FOUND
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT


def state(env: Env) -> tuple:
    """Everything a request could leave behind: files under the root (and beside it), mounts, records."""
    files = sorted(str(p.relative_to(env.root.parent)) for p in env.root.parent.rglob("*")
                   if "work" not in p.relative_to(env.root.parent).parts[:1] and not p.name.endswith(".log")
                   and not p.name.startswith("metadata.db"))
    mounts = sorted(str(m.target) for m in mounts_below(env.root))
    records = sorted((i.name, i.parent, i.kind, tuple(sorted(i.labels.items())), i.updated_at.ToNanoseconds())
                     for i in env.client.walk())
    return files, mounts, records


@pytest.fixture
def chain(env: Env) -> Env:
    """base (committed) <- top (committed) <- active, plus a view on top."""
    c = env.client
    c.prepare("base-a")
    c.commit("base", "base-a")
    c.prepare("top-a", "base")
    c.commit("top", "top-a")
    c.prepare("active", "top")
    c.view("view", "top")
    return env


def test_unknown_keys_are_not_found(chain: Env) -> None:
    c = chain.client
    before = state(chain)
    assert code_of(c.stat, "nope") == NOT_FOUND
    assert code_of(c.mounts, "nope") == NOT_FOUND
    assert code_of(c.remove, "nope") == NOT_FOUND
    assert code_of(c.usage, "nope") == NOT_FOUND
    assert code_of(c.commit, "new-name", "nope") == NOT_FOUND
    assert code_of(c.update, pb.Info(name="nope", labels={"a": "b"})) == NOT_FOUND
    assert state(chain) == before


def test_missing_or_uncommitted_parents(chain: Env) -> None:
    c = chain.client
    before = state(chain)
    assert code_of(c.prepare, "x", "missing-parent") == NOT_FOUND
    assert code_of(c.view, "x", "missing-parent") == NOT_FOUND
    assert code_of(c.prepare, "x", "active") == INVALID_ARGUMENT  # containerd: "parent is not committed"
    assert code_of(c.view, "x", "view") == INVALID_ARGUMENT
    assert state(chain) == before
    c.prepare("x", "top")  # the key was not taken by the failures


def test_commit_needs_an_active_snapshot_and_a_free_name(chain: Env) -> None:
    c = chain.client
    before = state(chain)
    assert code_of(c.commit, "from-view", "view") == FAILED_PRECONDITION
    assert code_of(c.commit, "from-committed", "top") == FAILED_PRECONDITION
    assert code_of(c.commit, "base", "active") == ALREADY_EXISTS
    assert code_of(c.commit, "view", "active") == ALREADY_EXISTS
    assert code_of(c.commit, "rebased", "active", None, "base") == INVALID_ARGUMENT  # it has a parent already
    assert state(chain) == before
    c.commit("committed-at-last", "active")
    assert c.stat("committed-at-last").parent == "top"


def test_duplicate_keys_across_kinds(chain: Env) -> None:
    c = chain.client
    before = state(chain)
    for key in ("base", "top", "active", "view"):
        assert code_of(c.prepare, key, "") == ALREADY_EXISTS
        assert code_of(c.view, key, "top") == ALREADY_EXISTS
    assert state(chain) == before


def test_removal_with_children_and_mounts_of_committed(chain: Env) -> None:
    c = chain.client
    before = state(chain)
    assert code_of(c.remove, "base") == FAILED_PRECONDITION
    assert code_of(c.remove, "top") == FAILED_PRECONDITION
    assert code_of(c.mounts, "top") == FAILED_PRECONDITION
    assert state(chain) == before


def test_malformed_requests_are_invalid(chain: Env) -> None:
    c = chain.client
    before = state(chain)
    assert code_of(c.prepare, "", "") == INVALID_ARGUMENT
    assert code_of(c.prepare, "nul\0key", "") == INVALID_ARGUMENT
    assert code_of(c.stat, "") == INVALID_ARGUMENT
    assert code_of(c.prepare, "big-label", "", {"k": "v" * 4096}) == INVALID_ARGUMENT
    assert code_of(c.update, c.stat("top"), "kind") == INVALID_ARGUMENT
    assert code_of(c.walk, "name==") == INVALID_ARGUMENT
    assert code_of(c.walk, "labels.\"x") == INVALID_ARGUMENT
    assert state(chain) == before


HOSTILE_KEYS = ["../../etc", "/", "..", ".", "a/../../b", "default/7/../../../../tmp/evil", "/etc/passwd",
                "x" * 3000, "名前/\n/\t", "$(touch /tmp/pwned)", "-rf"]


def test_hostile_keys_are_data(env: Env) -> None:
    c = env.client
    outside = sorted(os.listdir(env.root.parent))
    for i, key in enumerate(HOSTILE_KEYS):
        assert code_of(c.stat, key) == NOT_FOUND
        mounts = c.prepare(key, "", {"i": str(i)})
        assert len(mounts) == 1
        source = Path(mounts[0].source)
        assert source.parent.parent == env.root / "snapshots" and source.parent.name.isdigit(), source
        with mounted(mounts, env.work / f"m{i}") as target:
            (target / "file").write_text(key)
        c.commit(key + "@committed", key)
        view = c.view(key, key + "@committed")
        assert Path(view[0].source).parent.parent == env.root / "snapshots"
        with mounted(view, env.work / f"v{i}") as target:
            assert (target / "file").read_text() == key
        assert c.stat(key).parent == key + "@committed"
    assert sorted(i.name for i in c.walk()) == sorted(HOSTILE_KEYS + [k + "@committed" for k in HOSTILE_KEYS])
    assert sorted(os.listdir(env.root.parent)) == outside
    assert not Path("/tmp/pwned").exists()
    for key in HOSTILE_KEYS:
        c.remove(key)
        c.remove(key + "@committed")
    c.cleanup()
    assert list((env.root / "snapshots").iterdir()) == []
    assert code_of(c.stat, "../../etc") == NOT_FOUND
