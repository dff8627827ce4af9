"""What must hold between a snapshotter's records, directories, blobs and mounts whenever it serves, checked
from the outside: records through the gRPC API (their ids from the database file), directories and blobs on
disk (every committed blob read back with ErofsImage), mounts from the kernel's mount table."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from erofsfuse.erofs.image import ErofsImage
from snapshotter.proto_gen.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from tests.snapshotter.conftest import Env
from tests.snapshotter.mounting import mounts_below

VIEW, ACTIVE, COMMITTED = pb.VIEW, pb.ACTIVE, pb.COMMITTED
# what a snapshot directory may hold, by kind (stack files belong to committed layers at the top of a chain)
ALLOWED = {
    COMMITTED: {"fs", "layer.erofs", "stack", "stack.json", "stack.log"},
    ACTIVE: {"fs", "work", ".erofslayer"},
    VIEW: {"fs"},
}
REQUIRED = {COMMITTED: {"fs", "layer.erofs"}, ACTIVE: {"fs", "work", ".erofslayer"}, VIEW: {"fs"}}


@dataclass(frozen=True)
class Record:
    id: int  # names the snapshot's directory
    key: str
    kind: int
    parent: str


def records(env: Env) -> dict[str, Record]:
    """Every snapshot as List shows it, with the id its directory is named by."""
    infos = env.client.walk()
    with contextlib.closing(sqlite3.connect(f"file:{env.root / 'metadata.db'}?mode=ro", uri=True)) as db:
        ids = dict(db.execute("SELECT key, id FROM snapshots"))
    assert set(ids) == {i.name for i in infos}
    return {i.name: Record(ids[i.name], i.name, i.kind, i.parent) for i in infos}


def blob_files(blob: Path) -> dict[str, bytes]:
    """The regular files in a layer blob and their contents, read with erofsfuse's own reader."""
    found = {}
    with ErofsImage(str(blob)) as image:
        for path, ino in image.walk():
            if image.file_type(ino) == "file":
                found[path.decode()] = image.read(ino, 0, image.stat(ino).st_size)
    return found


def mounts_referenced(env: Env, snapshots: Mapping[str, Record]) -> set[Path]:
    """The snapshotter's mounts that the Mounts answers of live snapshots point at (lowerdirs, bind sources)."""
    snapshots_dir = env.root / "snapshots"
    used = set()
    for record in snapshots.values():
        if record.kind == COMMITTED or not record.parent:
            continue
        for m in env.client.mounts(record.key):
            paths = [m.source] if m.type == "bind" else \
                [p for o in m.options if o.startswith("lowerdir=") for p in o.removeprefix("lowerdir=").split(":")]
            used.update(Path(p) for p in paths if snapshots_dir in Path(p).parents)
    return used


def check_consistent(env: Env, layers: Mapping[str, Mapping[str, bytes]]) -> dict[str, Record]:
    """Assert that records, directories, blobs and mounts agree; ``layers`` gives the exact files of the
    committed snapshots the caller knows. Returns the records."""
    held = mounts_below(env.root / "snapshots")  # before Mounts calls, which would mount what is missing
    snapshots = records(env)
    by_id = {r.id: r for r in snapshots.values()}
    directories = {p.name for p in (env.root / "snapshots").iterdir()}
    assert directories == {str(i) for i in by_id}, "directories and records differ"
    for record in snapshots.values():
        directory = env.root / "snapshots" / str(record.id)
        names = set(os.listdir(directory))
        assert REQUIRED[record.kind] <= names <= ALLOWED[record.kind], (record, names)
        if record.kind == COMMITTED:
            files = blob_files(directory / "layer.erofs")
            if record.key in layers:
                assert files == dict(layers[record.key]), record
            if not any(m.target == directory / "fs" for m in held):
                assert os.listdir(directory / "fs") == [], f"{record}: the upper dir was not retired"
    assert len({m.target for m in held}) == len(held), "a mount is stacked on another"
    assert {m.target for m in held} == mounts_referenced(env, snapshots), "mounts and snapshots differ"
    for m in held:
        os.statvfs(m.target)  # answers (a dead FUSE mount raises ENOTCONN)
    return snapshots


def check_trash_empty(env: Env) -> None:
    """After Cleanup: everything discarded is deleted."""
    assert list((env.root / "trash").iterdir()) == []
