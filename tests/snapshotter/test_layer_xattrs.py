"""Whether a committed layer has xattrs a stack shows: found at Commit, kept in the records, written into
the stack file of fuse mode, so that erofsfuse need not search the layers itself."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from snapshotter import core
from snapshotter.idle import IdlePolicy
from snapshotter.layout import Layout
from snapshotter.metadata import Kind, MetadataStore
from snapshotter.planner import Mode, stack_document
from tests.snapshotter import fstest
from tests.snapshotter.conftest import erofsfuse_missing
from tests.snapshotter.mounting import unmount_below
from tests.snapshotter.test_testsuite import mounted
from tests.snapshotter.test_verity import commit_chain

BASE = fstest.apply(
    fstest.create_dir("/etc", 0o755),
    fstest.create_file("/etc/os-release", b"NAME=test\n", 0o644),
    fstest.create_dir("/data", 0o755),
    fstest.create_file("/data/old", b"old\n", 0o644),
)
WITH_XATTR = fstest.apply(
    fstest.create_file("/etc/colored", b"x\n", 0o644),
    fstest.set_xattr("/etc/colored", "user.color", b"blue"),
)
# a whiteout and an opaque directory: overlayfs' own markers, which a stack applies and never shows
MARKERS_ONLY = fstest.apply(
    fstest.remove_all("/etc/os-release"),
    fstest.remove_all("/data"),
    fstest.create_dir("/data", 0o750),
    fstest.create_file("/data/new", b"new\n", 0o644),
)


def stack_hints(layout: Layout, top: int) -> list[bool | None]:
    """The "xattrs" key of each layer of the stack file of ``top``'s chain, bottom first."""
    doc = json.loads(layout.stack_file(top).read_text())
    return [layer.get("xattrs") for layer in doc["layers"]]


def wait_for_log(path: Path, needle: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while needle not in (text := path.read_text(errors="replace") if path.exists() else ""):
        assert time.monotonic() < deadline, f"{needle!r} not in {path}:\n{text}"
        time.sleep(0.05)
    return text


@pytest.mark.skipif(erofsfuse_missing() is not None, reason=str(erofsfuse_missing()))
def test_commit_records_whether_a_layer_shows_xattrs(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "root")
    snap = core.Snapshotter(layout, Mode.FUSE, idle=IdlePolicy(seconds=0))
    try:
        commit_chain(snap, tmp_path, (BASE, WITH_XATTR, MARKERS_ONLY))
        ids = [snap.stat(f"c{i}").id for i in range(3)]
        assert [snap.stat(f"c{i}").xattrs for i in range(3)] == [False, True, False]

        # the base alone: the stack file says it has none, the daemon does not search and hides getxattr
        with mounted(snap.view("v0", "c0", {}), tmp_path / "v0") as target:
            assert stack_hints(layout, ids[0]) == [False]
            wait_for_log(layout.stack_log(ids[0]), "no inode has an xattr, scanned 0 inodes")
            with pytest.raises(OSError) as caught:
                os.getxattr(target / "etc" / "os-release", "user.color")
            assert caught.value.errno == errno.EOPNOTSUPP
        snap.remove("v0")

        # the three layers: the middle one's xattr is shown, so every answer stays exact
        with mounted(snap.view("v2", "c2", {}), tmp_path / "v2") as target:
            assert stack_hints(layout, ids[2]) == [False, True, False]
            wait_for_log(layout.stack_log(ids[2]), f"layer 1 ({layout.blob(ids[1])}) has xattrs, says the stack file")
            assert os.getxattr(target / "etc" / "colored", "user.color") == b"blue"
            assert os.listxattr(target / "data") == []
        snap.remove("v2")
    finally:
        snap.close()
        unmount_below(tmp_path)


@pytest.mark.skipif(erofsfuse_missing() is not None, reason=str(erofsfuse_missing()))
def test_layers_committed_before_the_record_are_searched_by_the_daemon(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "root")
    snap = core.Snapshotter(layout, Mode.FUSE, idle=IdlePolicy(seconds=0))
    try:
        commit_chain(snap, tmp_path, (BASE, MARKERS_ONLY))
        ids = [snap.stat(f"c{i}").id for i in range(2)]
        with sqlite3.connect(layout.metadata_path) as db:  # what a database from before the column holds
            db.execute("UPDATE snapshots SET xattrs = NULL WHERE id = ?", (ids[0],))
        assert snap.stat("c0").xattrs is None
        with mounted(snap.view("v", "c1", {}), tmp_path / "v"):
            assert stack_hints(layout, ids[1]) == [None, False]
            wait_for_log(layout.stack_log(ids[1]), "no inode has an xattr, scanned ")
        snap.remove("v")
    finally:
        snap.close()
        unmount_below(tmp_path)


def test_an_older_database_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    with sqlite3.connect(path) as db:  # the table as it was before the xattrs column
        db.execute("CREATE TABLE snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,"
                   " parent_id INTEGER REFERENCES snapshots(id), kind INTEGER NOT NULL, created_ns INTEGER NOT NULL,"
                   " updated_ns INTEGER NOT NULL, labels TEXT NOT NULL, mode TEXT, size INTEGER NOT NULL DEFAULT 0,"
                   " inodes INTEGER NOT NULL DEFAULT 0, flattening TEXT, verity TEXT)")
        db.execute("INSERT INTO snapshots (key, kind, created_ns, updated_ns, labels) VALUES ('old', 3, 1, 1, '{}')")
    store = MetadataStore(path)
    try:
        assert store.get("old").xattrs is None
        with store.transaction() as tx:
            active = tx.create(Kind.ACTIVE, "new", None, {})
            for_commit = tx.commit(active, "committed", {}, None, 10, 2, None, True)
        assert for_commit.xattrs is True and store.get("committed").xattrs is True
    finally:
        store.close()


def test_stack_document_says_what_the_records_know() -> None:
    doc = stack_document([7, 3, 1], Layout(Path("/r")), xattrs={7: True, 1: False})
    assert [layer.get("xattrs") for layer in doc["layers"]] == [False, None, True]
