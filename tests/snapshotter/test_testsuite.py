"""containerd's snapshotter test suite (core/snapshots/testsuite), ported to the gRPC service.

Every case runs against a fresh ``erofs-snapshotter`` process over its unix socket, once in kernel mode
and once in fuse mode. Keys are the same absolute paths the Go suite uses (keys are data). Trees are
checked against the same appliers run on a plain directory, as the Go suite does.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from snapshotter.proto_gen.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from tests.snapshotter import fstest
from tests.snapshotter.conftest import Env
from tests.snapshotter.mounting import mount_all, unmount_all

OPT = {"containerd.io/gc.root": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def code_of(call, *args) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value.code()


@contextlib.contextmanager
def mounted(mounts, target: Path):
    target.mkdir(parents=True, exist_ok=True)
    mount_all(mounts, target)
    try:
        yield target
    finally:
        unmount_all(target)


def prepare_and_mount(env: Env, name: str, parent: str) -> Path:
    """snapshotterPrepareMount: prepare ``work/name`` on ``parent`` and mount it at that path."""
    preparing = env.work / name
    preparing.mkdir(parents=True, exist_ok=True)
    mounts = env.client.prepare(str(preparing), parent, OPT)
    assert len(mounts) >= 1
    mount_all(mounts, preparing)
    return preparing


def create_snapshot(env: Env, parent: str, applier: fstest.Applier) -> str:
    name = f"{id(applier):x}-{random.getrandbits(32)}"
    prepare = f"{name}-prepare"
    mounts = env.client.prepare(prepare, parent, OPT)
    with tempfile.TemporaryDirectory(dir=env.work, prefix="prepare") as td, mounted(mounts, Path(td)) as target:
        applier(target)
    env.client.commit(name, prepare, OPT)
    return name


def check_snapshot(env: Env, name: str, expected: Path) -> None:
    view = f"{name}-view"
    mounts = env.client.view(view, name, OPT)
    try:
        with tempfile.TemporaryDirectory(dir=env.work, prefix="check") as td, mounted(mounts, Path(td)) as target:
            fstest.check_directory_equal(expected, target)
    finally:
        env.client.remove(view)


def check_snapshots(env: Env, *appliers: fstest.Applier) -> None:
    """A chain with one applier per layer; every layer's view must equal the appliers run on one directory."""
    with tempfile.TemporaryDirectory(dir=env.work, prefix="flat") as flat:
        parent = ""
        for applier in appliers:
            name = create_snapshot(env, parent, applier)
            applier(Path(flat))
            check_snapshot(env, name, Path(flat))
            parent = name


def ns(ts) -> int:
    return ts.ToNanoseconds()


def test_basic(env: Env) -> None:
    initial = fstest.apply(
        fstest.create_file("/foo", b"foo\n", 0o777),
        fstest.create_dir("/a", 0o755),
        fstest.create_dir("/a/b", 0o755),
        fstest.create_dir("/a/b/c", 0o755),
    )
    diff = fstest.apply(
        fstest.create_file("/bar", b"bar\n", 0o777),
        fstest.create_file("/foo", b"bar\n", 0o777),
        fstest.remove_all("/a/b"),
    )
    c = env.client
    preparing = prepare_and_mount(env, "preparing", "")
    initial(preparing)
    unmount_all(preparing)

    committed = str(env.work / "committed")
    c.commit(committed, str(preparing), OPT)
    si = c.stat(committed)
    assert si.parent == ""
    assert si.kind == pb.COMMITTED
    assert code_of(c.stat, str(preparing)) == grpc.StatusCode.NOT_FOUND

    nxt = prepare_and_mount(env, "nextlayer", committed)
    fstest.check_directory_equal_with_applier(nxt, initial)
    diff(nxt)
    unmount_all(nxt)

    ni = c.stat(str(nxt))
    assert ni.parent == committed
    assert ni.kind == pb.ACTIVE

    next_committed = str(env.work / "committed-next")
    c.commit(next_committed, str(nxt), OPT)
    si2 = c.stat(next_committed)
    assert si2.parent == committed
    assert si2.kind == pb.COMMITTED
    assert code_of(c.stat, str(nxt)) == grpc.StatusCode.NOT_FOUND

    walked = {info.name: info for info in c.walk()}
    assert walked[si.name] == si
    assert walked[si2.name] == si2

    nextnext = env.work / "nextnextlayer"
    with mounted(c.view(str(nextnext), next_committed, OPT), nextnext):
        fstest.check_directory_equal_with_applier(nextnext, fstest.apply(initial, diff))
    c.remove(str(nextnext))

    with pytest.raises(grpc.RpcError) as failure:
        c.remove(committed)
    assert "remove" in failure.value.details()
    c.remove(next_committed)
    c.remove(committed)


def test_stat_active(env: Env) -> None:
    preparing = prepare_and_mount(env, "preparing", "")
    unmount_all(preparing)
    (preparing / "foo").write_bytes(b"foo\n")
    si = env.client.stat(str(preparing))
    assert si.name == str(preparing)
    assert si.kind == pb.ACTIVE
    assert si.parent == ""


def test_stat_committed(env: Env) -> None:
    preparing = prepare_and_mount(env, "preparing", "")
    unmount_all(preparing)
    (preparing / "foo").write_bytes(b"foo\n")
    committed = str(env.work / "committed")
    env.client.commit(committed, str(preparing), OPT)
    si = env.client.stat(committed)
    assert si.name == committed
    assert si.kind == pb.COMMITTED
    assert si.parent == ""


def test_transitivity(env: Env) -> None:
    c = env.client
    preparing = prepare_and_mount(env, "preparing", "")
    (preparing / "foo").write_bytes(b"foo\n")
    unmount_all(preparing)
    snap_a = str(env.work / "snapA")
    c.commit(snap_a, str(preparing), OPT)

    nxt = prepare_and_mount(env, "next", snap_a)
    (nxt / "foo").write_bytes(b"foo bar\n")
    unmount_all(nxt)
    snap_b = str(env.work / "snapB")
    c.commit(snap_b, str(nxt), OPT)

    si_a, si_b = c.stat(snap_a), c.stat(snap_b)
    si_parent_b = c.stat(si_b.parent)
    assert si_a.parent == ""
    assert si_b.parent == snap_a
    assert si_parent_b.parent == ""


def test_prepare_view_failing(env: Env) -> None:
    c = env.client
    preparing = prepare_and_mount(env, "preparing", "")
    unmount_all(preparing)
    snap_a = str(env.work / "snapA")
    c.commit(snap_a, str(preparing), OPT)

    new_layer = str(env.work / "newlayer")
    c.prepare(new_layer, snap_a, OPT)
    assert code_of(c.view, new_layer, snap_a, OPT) == grpc.StatusCode.ALREADY_EXISTS

    prep_layer = str(env.work / "prepLayer")
    c.prepare(prep_layer, snap_a, OPT)
    assert code_of(c.prepare, prep_layer, snap_a, OPT) == grpc.StatusCode.ALREADY_EXISTS

    view_layer = str(env.work / "viewLayer")
    c.view(view_layer, snap_a, OPT)
    assert code_of(c.view, view_layer, snap_a, OPT) == grpc.StatusCode.ALREADY_EXISTS


def base_test_snapshots(env: Env) -> None:
    c = env.client
    c.prepare("c1-a", "", OPT)
    c.commit("c1", "c1-a", OPT)
    c.prepare("c2-a", "c1", OPT)
    c.commit("c2", "c2-a", OPT)
    c.prepare("a1", "c2", OPT)
    c.prepare("a2", "", OPT)
    c.view("v1", "c2", OPT)
    c.view("v2", "", OPT)


def test_update(env: Env) -> None:
    c = env.client
    t1 = time.time_ns()
    base_test_snapshots(env)
    t2 = time.time_ns()
    cases = [("c1", pb.COMMITTED, ""), ("c2", pb.COMMITTED, "c1"), ("a1", pb.ACTIVE, "c2"), ("a2", pb.ACTIVE, ""),
             ("v1", pb.VIEW, "c2"), ("v2", pb.VIEW, "")]
    for name, kind, parent in cases:
        st = c.stat(name)
        assert t1 <= ns(st.created_at) <= t2, name
        assert st.created_at == st.updated_at, name
        assert (st.kind, st.parent, st.name) == (kind, parent, name)

        created_at = pb.Info(created_at=st.created_at).created_at
        root_time = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        expected = {"l1": "v1", "l2": "v2", "l3": "v3", "containerd.io/gc.root": root_time}
        st.parent = "doesnotexist"
        st.labels.clear()
        st.labels.update(expected)
        u1 = time.time_ns()
        st = c.update(st)
        u2 = time.time_ns()
        assert st.created_at == created_at, name
        assert u1 <= ns(st.updated_at) <= u2, name
        assert (st.kind, st.parent, st.name) == (kind, parent, name)
        assert dict(st.labels) == expected

        expected = {"l1": "updated", "l3": "v3", "containerd.io/gc.root": root_time}
        st.labels.clear()
        st.labels.update({"l1": "updated", "l4": "v4"})
        st = c.update(st, "labels.l1", "labels.l2")
        assert dict(st.labels) == expected

        expected = {"l4": "v4", "containerd.io/gc.root": root_time}
        st.labels.clear()
        st.labels.update(expected)
        st = c.update(st, "labels")
        assert dict(st.labels) == expected

        st.parent = "doesnotexist"
        assert code_of(c.update, st, "parent") == grpc.StatusCode.INVALID_ARGUMENT


def test_remove(env: Env) -> None:
    c = env.client
    c.prepare("committed-a", "", OPT)
    c.commit("committed-1", "committed-a", OPT)
    c.prepare("reuse-1", "committed-1", OPT)
    c.remove("reuse-1")
    c.view("reuse-1", "committed-1", OPT)
    c.remove("reuse-1")
    c.prepare("reuse-1", "", OPT)
    c.remove("committed-1")
    c.commit("committed-1", "reuse-1", OPT)


def test_walk(env: Env) -> None:
    c = env.client
    opt = {"containerd.io/gc.root": "check-walk"}
    c.prepare("a-np", "", opt)
    c.prepare("p-tmp", "", opt)
    c.commit("p", "p-tmp", opt)
    c.prepare("a", "p", opt)
    c.view("v", "p", opt)
    c.prepare("p-wl-tmp", "", opt)
    c.commit("p-wl", "p-wl-tmp", {"l": "1", **opt})
    c.prepare("a-wl", "p-wl", {"l": "2", **opt})
    c.view("v-wl", "p-wl", {"l": "3", **opt})
    c.prepare("a-np-wl", "", {"l": "2", **opt})

    cases = [
        (["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"], ['labels."containerd.io/gc.root"==check-walk']),
        (["a-np", "a", "a-wl", "a-np-wl"], ['kind==active,labels."containerd.io/gc.root"==check-walk']),
        (["v", "v-wl"], ['kind==view,labels."containerd.io/gc.root"==check-walk']),
        (["p", "p-wl"], ['kind==committed,labels."containerd.io/gc.root"==check-walk']),
        (["p", "a-np-wl"], ["name==p", "name==a-np-wl"]),
        (["a-wl"], ["name==a-wl,labels.l"]),
        (["a", "v"], ["parent==p"]),
        (["a", "v", "a-wl", "v-wl"], ['parent!="",labels."containerd.io/gc.root"==check-walk']),
        (["p-wl", "a-wl", "v-wl", "a-np-wl"], ["labels.l"]),
        (["a-wl", "a-np-wl"], ["labels.l==2"]),
    ]
    for matches, filters in cases:
        assert sorted(i.name for i in c.walk(*filters)) == sorted(matches), filters


def test_layer_file_update(env: Env) -> None:
    l1 = fstest.apply(
        fstest.create_dir("/etc", 0o700),
        fstest.create_file("/etc/hosts", b"mydomain 10.0.0.1", 0o644),
        fstest.create_file("/etc/profile", b"PATH=/usr/bin", 0o644),
    )
    l2 = fstest.apply(
        fstest.create_file("/etc/hosts", b"mydomain 10.0.0.2", 0o644),
        fstest.create_file("/etc/profile", b"PATH=/usr/bin", 0o666),
        fstest.create_dir("/root", 0o700),
        fstest.create_file("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin", 0o644),
    )
    for _ in range(5):  # across second boundaries, as the original does for sporadic failures
        check_snapshots(env, l1, l2)
        time.sleep(1 - time.time() % 1)


def test_remove_directory_in_lower_layer(env: Env) -> None:
    check_snapshots(
        env,
        fstest.apply(fstest.create_dir("/lib", 0o700), fstest.create_file("/lib/hidden", b"", 0o644)),
        fstest.apply(fstest.remove_all("/lib"), fstest.create_dir("/lib", 0o700),
                     fstest.create_file("/lib/not-hidden", b"", 0o644)),
        fstest.apply(fstest.create_file("/lib/newfile", b"", 0o644)),
    )


def test_chown(env: Env) -> None:
    check_snapshots(
        env,
        fstest.apply(
            fstest.create_dir("/opt", 0o700),
            fstest.create_dir("/opt/a", 0o700),
            fstest.create_dir("/opt/a/b", 0o700),
            fstest.create_file("/opt/a/b/file.txt", b"hello", 0o644),
        ),
        fstest.apply(
            fstest.chown("/opt", 1, 1),
            fstest.chown("/opt/a", 1, 1),
            fstest.chown("/opt/a/b", 1, 1),
            fstest.chown("/opt/a/b/file.txt", 1, 1),
        ),
    )


def test_directory_permission_on_commit(env: Env) -> None:
    check_snapshots(
        env,
        fstest.apply(
            fstest.create_dir("/dir1", 0o700),
            fstest.create_dir("/dir2", 0o700),
            fstest.create_dir("/dir3", 0o700),
            fstest.create_dir("/dir4", 0o700),
            fstest.create_file("/dir4/f1", b"...", 0o644),
            fstest.create_dir("/dir5", 0o700),
            fstest.create_file("/dir5/f1", b"...", 0o644),
            fstest.chown("/dir1", 1, 1),
            fstest.chown("/dir2", 1, 1),
            fstest.chown("/dir3", 1, 1),
            fstest.chown("/dir5", 1, 1),
            fstest.chown("/dir5/f1", 1, 1),
        ),
        fstest.apply(
            fstest.chown("/dir2", 0, 0),
            fstest.remove_all("/dir3"),
            fstest.chown("/dir4", 1, 1),
            fstest.chown("/dir4/f1", 1, 1),
        ),
        fstest.apply(
            fstest.create_dir("/dir3", 0o700),
            fstest.chown("/dir3", 1, 1),
            fstest.remove_all("/dir5"),
            fstest.create_dir("/dir5", 0o700),
            fstest.chown("/dir5", 1, 1),
        ),
    )


def test_remove_intermediate_snapshot(env: Env) -> None:
    c = env.client
    base = prepare_and_mount(env, "base", "")
    unmount_all(base)
    committed_base = str(env.work / "committed-base")
    c.commit(committed_base, str(base), OPT)

    intermediate = str(env.work / "intermediate")
    c.prepare(intermediate, committed_base, OPT)
    committed_inter = str(env.work / "committed-inter")
    c.commit(committed_inter, intermediate, OPT)

    top = str(env.work / "toplayer")
    c.prepare(top, committed_inter, OPT)
    assert code_of(c.remove, committed_inter) == grpc.StatusCode.FAILED_PRECONDITION
    c.remove(top)
    c.remove(committed_inter)
    c.remove(committed_base)


def test_deleted_files_in_child_snapshot(env: Env) -> None:
    check_snapshots(
        env,
        fstest.apply(fstest.create_file("/foo", b"foo\n", 0o777), fstest.create_file("/foobar", b"foobar\n", 0o777)),
        fstest.apply(fstest.remove_all("/foobar")),
        fstest.apply(),
    )


def test_move_file_from_lower_layer(env: Env) -> None:
    check_snapshots(
        env,
        fstest.apply(
            fstest.create_dir("/dir1", 0o700),
            fstest.create_file("/dir1/f1", b"Hello", 0o644),
            fstest.create_dir("dir2", 0o700),
            fstest.create_file("dir2/f2", b"...", 0o644),
        ),
        fstest.apply(
            fstest.create_dir("/dir3", 0o700),
            fstest.create_file("/dir3/f1", b"Hello", 0o644),
            fstest.remove_all("/dir1"),
            fstest.link("dir2/f2", "dir3/f2"),
            fstest.remove_all("dir2/f2"),
        ),
    )


def test_view_readonly(env: Env) -> None:
    c = env.client
    preparing = str(env.work / "preparing")
    c.prepare(preparing, "", OPT)
    committed = str(env.work / "committed")
    c.commit(committed, preparing, OPT)
    view = str(env.work / "view")
    mounts = c.view(view, committed, OPT)
    with mounted(mounts, env.work / "view-mount") as target, pytest.raises(OSError):
        (target / "testfile").write_bytes(b"testcontent")
    c.remove(view)
    c.remove(committed)


def test_stat_in_walk(env: Env) -> None:
    c = env.client
    prefix = "stats-in-walk-"
    c.prepare(f"{prefix}c1-a", "", OPT)
    c.commit(f"{prefix}c1", f"{prefix}c1-a", OPT)
    c.prepare(f"{prefix}c2-a", f"{prefix}c1", OPT)
    c.commit(f"{prefix}c2", f"{prefix}c2-a", OPT)
    c.prepare(f"{prefix}a1", f"{prefix}c2", OPT)
    c.view(f"{prefix}v1", f"{prefix}c2", OPT)
    seen = 0
    for batch in c.stub.List(pb.ListSnapshotsRequest()):  # Stat while the stream is open
        for info in batch.info:
            if info.name.startswith(prefix):
                assert c.stat(info.name) == info
                seen += 1
    assert seen == 4


def test_close_twice(env: Env) -> None:
    c = env.client
    name = f"closeTwice-{random.getrandbits(32)}"
    c.prepare(f"{name}-prepare", "", OPT)
    c.commit(name, f"{name}-prepare", OPT)
    c.remove(name)
    assert env.daemon.stop() == 0
    assert env.daemon.stop() is None
    c.close()
    c.close()


def test_root_permission(env: Env) -> None:
    preparing = prepare_and_mount(env, "preparing", "")
    try:
        assert os.stat(preparing).st_mode & 0o777 == 0o755
    finally:
        unmount_all(preparing)


def test_rename(env: Env) -> None:
    # Like overlayfs (no redirect_dir), the EROFS snapshotter cannot rename a lower directory: the Go suite
    # skips that step for "erofs", so does this port.
    check_snapshots(
        env,
        fstest.apply(
            fstest.create_dir("/dir1", 0o700),
            fstest.create_dir("/somefiles", 0o700),
            fstest.create_file("/somefiles/f1", b"was here first!", 0o644),
            fstest.create_file("/somefiles/f2", b"nothing interesting", 0o644),
        ),
        fstest.apply(
            fstest.create_file("/somefiles/f1-overwrite", b"new content 1", 0o644),
            fstest.rename("/somefiles/f1-overwrite", "/somefiles/f1"),
            fstest.rename("/somefiles/f2", "/somefiles/f3"),
        ),
    )


def test_128_layers_mount(env: Env) -> None:
    c = env.client
    appliers = [fstest.apply(
        fstest.create_file("/bottom", b"way at the bottom\n", 0o777),
        fstest.create_file("/overwriteme", b"FIRST!\n", 0o777),
        fstest.create_dir("/addhere", 0o755),
        fstest.create_dir("/onlyme", 0o755),
        fstest.create_file("/onlyme/bottom", b"bye!\n", 0o777),
    )]
    for i in range(1, 128):
        appliers.append(fstest.apply(
            fstest.create_file("/overwriteme", f"{i} WAS HERE!\n".encode(), 0o777),
            fstest.create_file(f"/addhere/file-{i}", b"same\n", 0o755),
            fstest.remove_all("/onlyme"),
            fstest.create_dir("/onlyme", 0o755),
            fstest.create_file(f"/onlyme/file-{i}", b"only me!\n", 0o777),
        ))
    flat = env.work / "flat"
    flat.mkdir(mode=0o777)
    parent = ""
    for i, applier in enumerate(appliers):
        preparing = env.work / f"prepare-layer-{i}"
        preparing.mkdir(mode=0o777)
        with mounted(c.prepare(str(preparing), parent, OPT), preparing):
            fstest.check_directory_equal(flat, preparing)
            applier(flat)
            applier(preparing)
            fstest.check_directory_equal(flat, preparing)
        parent = str(env.work / f"committed-{i}")
        c.commit(parent, str(preparing), OPT)
    view = env.work / "fullview"
    with mounted(c.view(str(view), parent, OPT), view):
        fstest.check_directory_equal(flat, view)
