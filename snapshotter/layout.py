"""Where everything of a snapshot lives on disk, by numeric id.

Keys are namespaced strings chosen by clients (``default/7/sha256:...``, even ``../../etc``); they never
become path components. Every snapshot gets ``snapshots/<id>/`` under the root::

    snapshots/<id>/fs/           upper dir while active; once committed, where layer.erofs is mounted (kernel mode)
    snapshots/<id>/work/         overlay work dir while active
    snapshots/<id>/.erofslayer   marker while active: containerd's EROFS differ may write layer.erofs beside it
    snapshots/<id>/layer.erofs   the committed layer
    snapshots/<id>/.layer.erofs.staged   at commit: the complete blob, until the record says committed
    snapshots/<id>/stack/        fuse mode: where erofsfuse serves the chain ending at this layer
    snapshots/<id>/stack.json    fuse mode: that chain, bottom layer first
    snapshots/<id>/stack.log     fuse mode: that daemon's log
    snapshots/<id>/stack.idle    fuse mode: when the daemon's last snapshot went, while it stays up idle
    snapshots/<id>/fsmeta.erofs  kernel mode, a flattened chain ending at this layer: its metadata, which
                                 refers to the layers' blobs as extra devices (built once, never rewritten)
    snapshots/<id>/fsmeta.refused  ... or why the chain cannot be flattened (a layer's data is not referable)
    snapshots/<id>/flat/         ... where the snapshotter mounts that fsmeta

With a separate writable root, ``fs/``, ``work/`` and ``.erofslayer`` of active snapshots live in
``<writable root>/snapshots/<id>/`` instead (committed layers stay under the root).

Nothing here is open to other users: the root, ``snapshots/`` and every snapshot directory are 0700
whatever the umask, upper dirs are 0755 like an image root, and files are 0644 or 0600.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MARKER = ".erofslayer"
BLOB = "layer.erofs"
STAGED_BLOB = ".layer.erofs.staged"
VERITY_TREE = "layer.verity"
PRIVATE_DIR = 0o700


@dataclass(frozen=True)
class Layout:
    root: Path
    writable_root: Path | None = None

    @property
    def metadata_path(self) -> Path:
        return self.root / "metadata.db"

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def writable_snapshots_dir(self) -> Path:
        return (self.writable_root or self.root) / "snapshots"

    @property
    def trash_dirs(self) -> list[Path]:
        """One trash per filesystem, so discarding is a rename."""
        dirs = [self.root / "trash"]
        if self.writable_root:
            dirs.append(self.writable_root / "trash")
        return dirs

    def snapshot_dir(self, snapshot_id: int) -> Path:
        return self.snapshots_dir / str(snapshot_id)

    def writable_dir(self, snapshot_id: int) -> Path:
        """The directory holding the upper and work dirs (and the differ's marker) of an active snapshot."""
        return self.writable_snapshots_dir / str(snapshot_id)

    def upper_dir(self, snapshot_id: int) -> Path:
        return self.writable_dir(snapshot_id) / "fs"

    def work_dir(self, snapshot_id: int) -> Path:
        return self.writable_dir(snapshot_id) / "work"

    def marker(self, snapshot_id: int) -> Path:
        return self.writable_dir(snapshot_id) / MARKER

    def blob(self, snapshot_id: int) -> Path:
        return self.snapshot_dir(snapshot_id) / BLOB

    def verity_tree(self, snapshot_id: int) -> Path:
        """A committed layer's dm-verity tree (with veritysetup's superblock), when it was given one."""
        return self.snapshot_dir(snapshot_id) / VERITY_TREE

    def staged_blob(self, snapshot_id: int) -> Path:
        """Where a complete blob waits during Commit: it becomes ``layer.erofs`` once the record is committed."""
        return self.snapshot_dir(snapshot_id) / STAGED_BLOB

    def differ_blob(self, snapshot_id: int) -> Path:
        """Where containerd's EROFS differ writes a layer it built itself (next to the marker)."""
        return self.writable_dir(snapshot_id) / BLOB

    def layer_mountpoint(self, snapshot_id: int) -> Path:
        return self.snapshot_dir(snapshot_id) / "fs"

    def stack_mountpoint(self, snapshot_id: int) -> Path:
        return self.snapshot_dir(snapshot_id) / "stack"

    def stack_file(self, snapshot_id: int) -> Path:
        return self.snapshot_dir(snapshot_id) / "stack.json"

    def stack_log(self, snapshot_id: int) -> Path:
        return self.snapshot_dir(snapshot_id) / "stack.log"

    def stack_idle(self, snapshot_id: int) -> Path:
        return self.snapshot_dir(snapshot_id) / "stack.idle"

    def fsmeta(self, snapshot_id: int) -> Path:
        return self.snapshot_dir(snapshot_id) / "fsmeta.erofs"

    def fsmeta_refusal(self, snapshot_id: int) -> Path:
        return self.snapshot_dir(snapshot_id) / "fsmeta.refused"

    def fsmeta_mountpoint(self, snapshot_id: int) -> Path:
        return self.snapshot_dir(snapshot_id) / "flat"

    def create_base(self) -> None:
        """The roots and their ``snapshots/`` and ``trash/``, private to root (also if they already existed)."""
        for d in (self.root, self.writable_root, self.snapshots_dir, self.writable_snapshots_dir, *self.trash_dirs):
            if d is not None:
                make_dir(d, PRIVATE_DIR, parents=True)

    def create_snapshot(self, snapshot_id: int, *, active: bool) -> None:
        """Directories of a new snapshot; the upper dir is 0755 like every image root."""
        for d in {self.snapshot_dir(snapshot_id), self.writable_dir(snapshot_id)}:
            d.mkdir(mode=PRIVATE_DIR)
        make_dir(self.upper_dir(snapshot_id), 0o755)
        if active:
            self.work_dir(snapshot_id).mkdir(mode=PRIVATE_DIR)
            write_file(self.marker(snapshot_id), b"", 0o644)

    def snapshot_dirs(self) -> dict[Path, int | None]:
        """Every entry of the snapshot directories, with the id it names (None if it names none)."""
        found: dict[Path, int | None] = {}
        for parent in {self.snapshots_dir, self.writable_snapshots_dir}:
            for entry in parent.iterdir() if parent.is_dir() else ():
                found[entry] = int(entry.name) if entry.name.isdigit() else None
        return found

    def owner_of(self, path: Path) -> tuple[int, str] | None:
        """(snapshot id, role) for a path directly inside a snapshot directory, e.g. (12, "stack")."""
        for base in {self.snapshots_dir, self.writable_snapshots_dir}:
            try:
                rel = path.relative_to(base)
            except ValueError:
                continue
            if len(rel.parts) == 2 and rel.parts[0].isdigit():
                return int(rel.parts[0]), rel.parts[1]
        return None


def make_dir(path: Path, mode: int, *, parents: bool = False) -> None:
    """A directory with exactly ``mode``, whatever the umask (it may exist already)."""
    path.mkdir(mode=mode, parents=parents, exist_ok=True)
    os.chmod(path, mode)


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically with a file of exactly ``mode`` (the umask plays no part)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    tmp.rename(path)
