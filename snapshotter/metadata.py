"""Snapshot records in SQLite.

containerd keeps its own records of what it asked for and expects ours to survive restarts, so every
operation runs in one SQLite transaction (WAL journal, synchronous commits). The numeric id of a record
names its directories (see layout.py) and is never reused (AUTOINCREMENT), so a stale directory or mount
can never be mistaken for a new snapshot's.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT NOT NULL UNIQUE,
    parent_id   INTEGER REFERENCES snapshots(id),
    kind        INTEGER NOT NULL,
    created_ns  INTEGER NOT NULL,
    updated_ns  INTEGER NOT NULL,
    labels      TEXT NOT NULL,
    mode        TEXT,
    size        INTEGER NOT NULL DEFAULT 0,
    inodes      INTEGER NOT NULL DEFAULT 0,
    flattening  TEXT,
    verity      TEXT,
    xattrs      INTEGER
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
"""
# columns added since the first schema, added to a database made before them: name -> declaration
_ADDED_COLUMNS = {"flattening": "TEXT", "verity": "TEXT", "xattrs": "INTEGER"}

DATABASE_MODE = 0o600
_COLUMNS = ("s.id, s.key, s.kind, s.parent_id, p.key, s.created_ns, s.updated_ns, s.labels, s.mode, s.size,"
            " s.inodes, s.flattening, s.verity, s.xattrs")
_SELECT = f"SELECT {_COLUMNS} FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id"


class Kind(enum.IntEnum):
    """Snapshot kinds, numbered as in containerd's API."""

    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


@dataclass(frozen=True)
class Snapshot:
    id: int
    key: str
    kind: Kind
    parent_id: int | None
    parent: str  # the parent's key, "" for none
    created_ns: int
    updated_ns: int
    labels: dict[str, str] = field(default_factory=dict)
    mode: str | None = None  # how the parent chain is mounted for this snapshot ("kernel"/"fuse"; why: a label)
    size: int = 0  # usage recorded at commit
    inodes: int = 0
    flattening: str | None = None  # kernel mode: whether and how the chain is flattened (planner.Flattening)
    verity: str | None = None  # a committed layer's dm-verity root hash (hex), when it was given a tree
    xattrs: bool | None = None  # whether a committed layer's blob has xattrs a stack shows (None: not recorded)

    @classmethod
    def _from_row(cls, row: tuple) -> Snapshot:
        (sid, key, kind, parent_id, parent, created, updated, labels, mode, size, inodes, flattening, verity,
         xattrs) = row
        return cls(sid, key, Kind(kind), parent_id, parent or "", created, updated, json.loads(labels), mode, size,
                   inodes, flattening, verity, None if xattrs is None else bool(xattrs))


def _clean_labels(labels: dict[str, str]) -> dict[str, str]:
    """Empty values delete a label, as in containerd."""
    return {k: v for k, v in labels.items() if v != ""}


class MetadataStore:
    """All snapshot records; use every method inside ``transaction()``."""

    def __init__(self, path: Path) -> None:
        # 0600 whatever the umask; SQLite gives its -wal and -shm files the database's mode
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, DATABASE_MODE)
        try:
            os.fchmod(fd, DATABASE_MODE)
        finally:
            os.close(fd)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(snapshots)")}
        for name, declaration in _ADDED_COLUMNS.items():
            if name not in present:
                self._conn.execute(f"ALTER TABLE snapshots ADD COLUMN {name} {declaration}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[MetadataStore]:
        """One write transaction (not nestable). Rolls back on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def _one(self, where: str, *args: object) -> Snapshot | None:
        row = self._conn.execute(f"{_SELECT} WHERE {where}", args).fetchone()
        return Snapshot._from_row(row) if row else None

    def find(self, key: str) -> Snapshot | None:
        return self._one("s.key = ?", key)

    def get(self, key: str) -> Snapshot:
        snap = self.find(key)
        if snap is None:
            raise NotFound(f"snapshot {key!r} does not exist")
        return snap

    def by_id(self, snapshot_id: int) -> Snapshot:
        snap = self._one("s.id = ?", snapshot_id)
        if snap is None:
            raise NotFound(f"snapshot #{snapshot_id} does not exist")
        return snap

    def all(self) -> list[Snapshot]:
        return [Snapshot._from_row(r) for r in self._conn.execute(f"{_SELECT} ORDER BY s.id")]

    def ancestors(self, snapshot_id: int) -> list[int]:
        """Ids of ``snapshot_id`` and every snapshot below it, nearest first."""
        rows = self._conn.execute(
            "WITH RECURSIVE chain(id, parent_id, depth) AS ("
            " SELECT id, parent_id, 0 FROM snapshots WHERE id = ?"
            " UNION ALL SELECT s.id, s.parent_id, c.depth + 1 FROM snapshots s JOIN chain c ON s.id = c.parent_id)"
            " SELECT id FROM chain ORDER BY depth", (snapshot_id,))
        return [r[0] for r in rows]

    def has_children(self, snapshot_id: int) -> bool:
        return self._conn.execute("SELECT 1 FROM snapshots WHERE parent_id = ? LIMIT 1", (snapshot_id,)).fetchone() \
            is not None

    def committed_parent(self, key: str) -> Snapshot:
        """The snapshot named as a parent, which must exist and be committed."""
        parent = self.find(key)
        if parent is None:
            raise NotFound(f"parent snapshot {key!r} does not exist")
        if parent.kind is not Kind.COMMITTED:
            raise InvalidArgument(f"parent {key!r} is not a committed snapshot")
        return parent

    def require_absent(self, key: str) -> None:
        """Keys of all kinds share one namespace: a new active, view or commit name must be unused."""
        if self.find(key) is not None:
            raise AlreadyExists(f"snapshot {key!r} already exists")

    def create(self, kind: Kind, key: str, parent: Snapshot | None, labels: dict[str, str],
               mode: str | None = None, flattening: str | None = None) -> Snapshot:
        """Insert a record for a key checked with ``require_absent`` in the same transaction."""
        now = time.time_ns()
        cur = self._conn.execute(
            "INSERT INTO snapshots (key, parent_id, kind, created_ns, updated_ns, labels, mode, flattening)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, parent.id if parent else None, int(kind), now, now, json.dumps(_clean_labels(labels)), mode,
             flattening))
        return self.by_id(cur.lastrowid)

    def commit(self, active: Snapshot, name: str, labels: dict[str, str], parent: Snapshot | None,
               size: int, inodes: int, verity: str | None = None, xattrs: bool | None = None) -> Snapshot:
        """Turn an active record into a committed one under ``name`` (checked with ``require_absent``).

        Labels are replaced, not inherited, and the creation time is the commit's, as in containerd.
        ``verity`` is the root hash of the layer's hash tree, if it was given one; ``xattrs`` whether its blob
        has xattrs a stack shows, if that was found out.
        """
        now = time.time_ns()
        self._conn.execute(
            "UPDATE snapshots SET key = ?, kind = ?, parent_id = ?, created_ns = ?, updated_ns = ?, labels = ?,"
            " mode = NULL, flattening = NULL, size = ?, inodes = ?, verity = ?, xattrs = ? WHERE id = ?",
            (name, int(Kind.COMMITTED), parent.id if parent else None, now, now, json.dumps(_clean_labels(labels)),
             size, inodes, verity, xattrs, active.id))
        return self.by_id(active.id)

    def delete(self, snapshot: Snapshot) -> None:
        if self.has_children(snapshot.id):
            raise FailedPrecondition(f"cannot remove snapshot {snapshot.key!r}: other snapshots are based on it")
        self._conn.execute("DELETE FROM snapshots WHERE id = ?", (snapshot.id,))

    def update_labels(self, key: str, labels: dict[str, str], paths: list[str]) -> Snapshot:
        """Apply a field mask ("labels", "labels.<key>"; none means all labels) as containerd does."""
        snap = self.get(key)
        updated = dict(snap.labels)
        if not paths:
            updated = dict(labels)
        for path in paths:
            if path == "labels":
                updated = dict(labels)
            elif path.startswith("labels."):
                name = path.removeprefix("labels.")
                updated[name] = labels.get(name, "")
            else:
                raise InvalidArgument(f"cannot update field {path!r} of snapshot {key!r}")
        self._conn.execute("UPDATE snapshots SET labels = ?, updated_ns = ? WHERE id = ?",
                           (json.dumps(_clean_labels(updated)), time.time_ns(), snap.id))
        return self.by_id(snap.id)
