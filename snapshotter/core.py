"""The snapshotter's operations: records, directories, layer blobs and mounts kept consistent.

Each operation runs under one lock and one metadata transaction; a failure rolls the record back and
removes what the operation created. The one slow step, building a layer blob at commit, runs outside the
lock so other requests go on meanwhile. Mounts that no live snapshot needs any more are released after
every commit and removal, and at start and Cleanup; an erofsfuse daemon that a removal left unused stays up
idle until its time is up (idle.py), when a timer thread releases it. While an image is unpacked, the layers
under the layer just unpacked stay mounted for the next one's snapshot (for ``UNPACK_PAUSE`` seconds), so an
image of N layers takes N layer mounts to unpack, not N²/2.

In kernel mode a chain deeper than ``flatten_layers`` is flattened (planner.py): its fsmeta is built before
the first snapshot on it is created, outside the lock like a commit's blob, and never rewritten; it lives in
the top layer's directory and goes with it.

Crash safety: the committed record is the commit point. A blob is complete and synced before the record
says committed and only then takes the name ``layer.erofs``; directories are made inside the creating
transaction and deleted after the removing one. Whatever a crash leaves between those steps (a staged blob,
an unretired upper dir, directories or mounts without a record) is finished or deleted by ``recover()``,
which runs at start before anything is served, and again at every Cleanup.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from . import filters
from .convert import (
    Usage,
    blob_usage,
    blob_xattrs,
    build_layer,
    copy_layer,
    format_verity,
    rename_synced,
    staged,
    sync_layer,
    tree_usage,
)
from .daemons import FuseDaemons, daemon_processes, find_erofsfuse, resident_memory
from .errors import ConversionError, FailedPrecondition, InvalidArgument, MountError, NotFound
from .faults import fault_point
from .flatten import MKFS_OPTIONS, NotFlattenable, build_fsmeta
from .idle import ExpiryTimer, IdlePolicy, IdleStack, boot_clock, judge_idle
from .layout import Layout, make_dir, write_file
from .metadata import Kind, MetadataStore, Snapshot
from .mounts import host_capabilities, mount_erofs, mounts_under, unmount
from .planner import (
    VERITY_LABEL,
    ChainUse,
    Flattening,
    HostCapabilities,
    Mode,
    ModeChoice,
    MountSpec,
    Verity,
    chain_stack,
    choose_mode,
    fits_mount_data,
    flattened_labels,
    flattens,
    fsmeta_devices,
    fsmeta_mount,
    plan_mounts,
    required_mounts,
    unpacking,
    verified_labels,
)
from .trash import Trash

log = logging.getLogger(__name__)

# seconds the layers under a layer just unpacked stay mounted, waiting for the next layer's snapshot
UNPACK_PAUSE = 30.0


def flattening_of(snap: Snapshot) -> Flattening:
    return Flattening(snap.flattening) if snap.flattening else Flattening.NONE


def erofs_source(target: Path) -> str | None:
    """The source of the erofs mount at ``target`` (None if there is none)."""
    return next((m.source for m in mounts_under(target) if m.target == target and m.fstype == "erofs"), None)


def snapshot_fields(snap: Snapshot) -> filters.FieldLookup:
    """The fields List filters see, named as in containerd."""
    kind = {Kind.ACTIVE: "active", Kind.VIEW: "view", Kind.COMMITTED: "committed"}[snap.kind]
    return filters.map_lookup({"kind": kind, "name": snap.key, "parent": snap.parent}, {"labels": snap.labels})


def chain_uses(snapshots: Iterable[Snapshot]) -> list[ChainUse]:
    """What the live (active and view) snapshots among ``snapshots`` (all of them) need mounted."""
    snapshots = list(snapshots)
    parents = {s.id: s.parent_id for s in snapshots}
    uses = []
    for snap in snapshots:
        if snap.kind is Kind.COMMITTED or snap.parent_id is None:
            continue
        chain, layer = [], snap.parent_id
        while layer is not None:
            chain.append(layer)
            layer = parents[layer]
        uses.append(ChainUse(Mode(snap.mode), tuple(chain), flattening_of(snap)))
    return uses


class Snapshotter:
    def __init__(self, layout: Layout, mode: Mode = Mode.AUTO, *, host: HostCapabilities | None = None,
                 erofsfuse: str | None = None, mkfs: str = "mkfs.erofs", idle: IdlePolicy | None = None,
                 flatten_layers: int = 0, verity: Verity = Verity.OFF) -> None:
        layout.create_base()
        self.layout = layout
        self.mode = mode
        self.host = host or host_capabilities()
        self.mkfs = mkfs
        self.verity = verity
        self.idle = idle or IdlePolicy()
        # chains are only flattened where the kernel mounts them; every layer is then made referable, since any
        # may end up in a deep chain
        kernel_mounts = mode is not Mode.FUSE and verity is not Verity.REQUIRED and not self.host.kernel_blocker()
        self.flatten_layers = flatten_layers if kernel_mounts else 0
        self.mkfs_options = MKFS_OPTIONS if self.flatten_layers else ()
        self.store = MetadataStore(layout.metadata_path)
        self.daemons = FuseDaemons(layout, find_erofsfuse(erofsfuse))
        self.trash = Trash(layout.trash_dirs)
        self._lock = threading.RLock()
        self._committing: set[int] = set()
        self._flattening = threading.Lock()  # one fsmeta build at a time
        self._building: set[int] = set()  # top layers whose fsmeta is being written
        self._closed = False
        self._expiry = ExpiryTimer(self._expire_idle)
        blocker = self.host.kernel_blocker()
        log.info("root %s, mode %s; kernel erofs mounts %s; erofsfuse: %s; idle erofsfuse daemons stay up %s; "
                 "chains flattened %s; layer hash trees %s",
                 layout.root, mode.value, f"impossible ({blocker})" if blocker else "possible",
                 self.daemons.binary or "not found",
                 f"for {self.idle.seconds:g}s (at most {self.idle.max_daemons}, {self.idle.max_memory >> 20} MiB)"
                 if self.idle.lingers else "not at all",
                 f"beyond {self.flatten_layers} layers" if self.flatten_layers else "never", verity.value)
        self.trash.requeue_leftovers()
        self.recover()
        self.restore_mounts()

    def close(self) -> None:
        """Close the records; mounts stay, since running containers may use them, and so do idle daemons: the next
        start adopts them all, and stops the idle ones whose time is up by then."""
        self._expiry.stop()  # before taking the lock, which an expiry in progress holds
        with self._lock:
            if not self._closed:
                self._closed = True
                self.store.close()

    # -- creating -------------------------------------------------------------------------------------
    def prepare(self, key: str, parent: str, labels: Mapping[str, str]) -> list[MountSpec]:
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str, labels: Mapping[str, str]) -> list[MountSpec]:
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(self, kind: Kind, key: str, parent_key: str, labels: Mapping[str, str]) -> list[MountSpec]:
        if parent_key:
            self._flatten_ahead(key, parent_key)
        with self._lock:
            try:
                with self.store.transaction() as store:
                    store.require_absent(key)
                    parent = store.committed_parent(parent_key) if parent_key else None
                    chain = store.ancestors(parent.id) if parent else []
                    choice, flattening = self._choose_mode(kind, key, chain) if chain else (None, Flattening.NONE)
                    fault_point("create:mounted")
                    verified = verified_labels(choice.mode, chain, self._roots(chain)) if choice else {}
                    snap = store.create(kind, key, parent,
                                        {**labels, **(choice.labels() if choice else {}),
                                         **flattened_labels(flattening, len(chain)), **verified},
                                        choice.mode.value if choice else None,
                                        None if flattening is Flattening.NONE else flattening.value)
                    try:
                        self._discard_dirs(snap.id)  # leftovers of a lost database must not leak into it
                        self.layout.create_snapshot(snap.id, active=kind is Kind.ACTIVE)
                        fault_point("create:dirs-made")
                    except BaseException:
                        self._discard_dirs(snap.id)
                        raise
                fault_point("create:recorded")
            except BaseException:
                self.release_unused()  # mounts made for a snapshot that was not created
                raise
            if choice:
                log.info("%s %r (#%d) on %d layers: %s mode%s, %s", kind.name.lower(), key, snap.id, len(chain),
                         choice.mode.value, "" if flattening is Flattening.NONE else f", flattened ({flattening})",
                         choice.reason)
            else:
                log.debug("%s %r (#%d) without parents", kind.name.lower(), key, snap.id)
            if flattening is Flattening.SPEC:
                self.release_unused()  # the fsmeta mount made to try it, if no other snapshot uses it
            return self._plan(snap, chain)

    def _choose_mode(self, kind: Kind, key: str, chain: Sequence[int]) -> tuple[ModeChoice, Flattening]:
        """Pick the mode for a chain and make its mounts live (auto tries the kernel first, unless verity is
        required)."""
        if self.verity is Verity.REQUIRED:
            roots = self._roots(chain)
            if missing := [layer for layer in chain if layer not in roots]:
                raise FailedPrecondition(f"verity is required, but layer #{missing[0]} of {len(missing)} without one "
                                         "has no hash tree (it was committed before verity was on)")
        refusal = None
        if self.mode is Mode.AUTO and self.host.kernel_blocker() is None and self.verity is not Verity.REQUIRED:
            try:
                flattening = self._mount_kernel(kind, key, chain)
            except MountError as exc:
                refusal = str(exc)
            else:
                return choose_mode(self.mode, self.host), flattening  # kernel mode, already mounted
        choice = choose_mode(self.mode, self.host, refusal, self.verity)
        if choice.mode is Mode.KERNEL:
            return choice, self._mount_kernel(kind, key, chain)
        self._serve_stack(chain)
        return choice, Flattening.NONE

    def _plan(self, snap: Snapshot, chain: Sequence[int]) -> list[MountSpec]:
        mode = Mode(snap.mode) if snap.mode else None
        return plan_mounts(snap.id, snap.kind, chain, mode, self.layout, userxattr=self.host.in_user_namespace,
                           flattening=flattening_of(snap))

    # -- flattening ---------------------------------------------------------------------------------------
    def _flatten_ahead(self, key: str, parent_key: str) -> None:
        """Build the fsmeta of the chain a new snapshot will be flattened on, if it has none yet: outside the
        lock, as a large chain takes seconds, and one build at a time. A chain that cannot be flattened, or
        whose fsmeta cannot be written, is served layer by layer."""
        if not self.flatten_layers:
            return
        with self._lock, self.store.transaction() as store:
            parent = store.find(parent_key)
            if parent is None or parent.kind is not Kind.COMMITTED:
                return  # _create says why
            chain = store.ancestors(parent.id)
        if not flattens(key, len(chain), self.flatten_layers):
            return
        with self._flattening:
            try:
                self._build_fsmeta(chain)
            except (OSError, ConversionError) as exc:  # e.g. the chain was removed meanwhile, or the disk is full
                log.error("cannot write the fsmeta of chain %d: %s", chain[0], exc)

    def _build_fsmeta(self, chain: Sequence[int]) -> None:
        """Write the chain's fsmeta (synced, then renamed into place: it is complete whenever it exists), or
        the reason it cannot be built, which spares later snapshots another try."""
        top = chain[0]
        fsmeta, refusal = self.layout.fsmeta(top), self.layout.fsmeta_refusal(top)
        if fsmeta.exists() or refusal.exists():
            return
        devices = fsmeta_devices(chain, self.layout)
        started = time.monotonic()
        with self._lock:
            self._building.add(top)  # recover() leaves its temporary file alone
        try:
            with staged(fsmeta) as tmp:
                built = build_fsmeta(chain_stack(chain, self.layout), tmp)
                if built.devices != devices:
                    raise ConversionError(f"the fsmeta of chain {top} refers to {built.devices}, not the layers")
        except NotFlattenable as exc:
            log.warning("chain %d (%d layers) is mounted layer by layer: %s", top, len(chain), exc)
            write_file(refusal, f"{exc}\n".encode(), 0o644)
            return
        finally:
            with self._lock:
                self._building.discard(top)
        log.info("flattened chain %d: %d layers, %d inodes (%d files referring to layer data) in a %d-byte fsmeta "
                 "in %.2fs", top, len(chain), built.inodes, built.files, built.size, time.monotonic() - started)

    # -- mounts -------------------------------------------------------------------------------------------
    def _mount_layers(self, chain: Sequence[int]) -> None:
        mounted = {e.target for e in mounts_under(self.layout.snapshots_dir) if e.fstype == "erofs"}
        for layer in reversed(chain):
            target = self.layout.layer_mountpoint(layer)
            if target not in mounted:
                mount_erofs(self.layout.blob(layer), target)
                log.debug("mounted layer #%d at %s", layer, target)

    def _mount_kernel(self, kind: Kind, key: str, chain: Sequence[int]) -> Flattening:
        """Mount ``chain`` for a new snapshot in kernel mode: flattened where it is deep and its fsmeta was built
        (a view gets the fsmeta's own mount where containerd can perform it), else layer by layer."""
        top = chain[0]
        if flattens(key, len(chain), self.flatten_layers) and self.layout.fsmeta(top).is_file():
            try:
                source = self._mount_fsmeta(chain)
            except MountError as exc:
                log.warning("chain %d: %s; mounting its %d layers instead", top, exc, len(chain))
            else:
                spec = fsmeta_mount(chain, self.layout)
                if kind is Kind.VIEW and source == spec.source and fits_mount_data(spec):
                    return Flattening.SPEC
                return Flattening.MOUNT
        self._mount_layers(chain)
        return Flattening.NONE

    def _mount_fsmeta(self, chain: Sequence[int]) -> str:
        """Mount the chain's fsmeta at the top layer's ``flat/`` unless it is mounted there. Returns the mount's
        source: the fsmeta itself, or a loop device where the kernel does not read the file directly."""
        target = self.layout.fsmeta_mountpoint(chain[0])
        source = erofs_source(target)
        if source is None:
            make_dir(target, 0o755)
            mount_erofs(self.layout.fsmeta(chain[0]), target, fsmeta_devices(chain, self.layout))
            log.debug("mounted the fsmeta of chain %d (%d layers) at %s", chain[0], len(chain), target)
            source = erofs_source(target)
        if source is None:
            raise MountError(f"the fsmeta of chain {chain[0]} is not in the mount table after mounting it at {target}")
        return source

    def _activate(self, mode: Mode, chain: Sequence[int], flattening: Flattening = Flattening.NONE) -> None:
        """Make sure the mounts serving ``chain`` are live (again, after a reboot or a crashed daemon)."""
        if mode is Mode.FUSE:
            self._serve_stack(chain)
        elif flattening is Flattening.NONE:
            self._mount_layers(chain)
        elif flattening is Flattening.MOUNT:
            self._mount_fsmeta(chain)
        # Flattening.SPEC: containerd mounts the fsmeta itself

    def release_unused(self, *, outgrown: int | None = None, unpacked: Sequence[int] = ()) -> None:
        """Unmount layers and fsmetas that no active snapshot or view needs, and stop the erofsfuse daemons no
        snapshot needs whose idle time is up (``_release_idle``).

        ``outgrown`` is the top of a chain whose snapshot was just committed: the chain ending in that snapshot
        takes its place (an image being unpacked layer by layer), so its daemon stops at once. ``unpacked`` are
        the layers under a layer just unpacked in kernel mode: they stay mounted for ``UNPACK_PAUSE`` seconds,
        as the next layer's snapshot needs them all again.
        """
        with self._lock:
            with self.store.transaction() as store:
                snapshots = store.all()
            required = required_mounts(chain_uses(snapshots))
            committed = {s.id for s in snapshots if s.kind is Kind.COMMITTED}
            unused: dict[int, Path] = {}
            for entry in mounts_under(self.layout.snapshots_dir):
                owner = self.layout.owner_of(entry.target)
                if owner is None:
                    continue
                layer, role = owner
                try:
                    if role == "fs" and entry.fstype == "erofs":
                        if layer not in required.kernel_layers and layer not in unpacked:
                            log.debug("unmounting layer #%d: no snapshot uses it", layer)
                            unmount(entry.target)
                    elif role == "flat" and entry.fstype == "erofs":
                        if layer not in required.fsmeta_mounts:
                            log.debug("unmounting the fsmeta of chain %d: no snapshot uses it", layer)
                            unmount(entry.target)
                    elif role != "stack" or layer in required.fuse_stacks:
                        continue
                    elif layer not in committed:
                        self.daemons.stop(layer, entry.target, "its top layer was removed")
                    elif layer == outgrown and self.idle.lingers:
                        self.daemons.stop(layer, entry.target, "its last snapshot was committed")
                    else:
                        unused[layer] = entry.target
                except MountError as exc:  # try again at the next release; the request itself went fine
                    log.warning("%s", exc)
            idle_expiry = self._release_idle(unused)
            unpack_expiry = boot_clock() + UNPACK_PAUSE if unpacked else None
            self._expiry.set(min(filter(None, (idle_expiry, unpack_expiry)), default=None))
            for top, users in required.users.items():
                log.debug("erofsfuse for chain %d: %d users", top, users)

    def _release_idle(self, unused: Mapping[int, Path]) -> float | None:
        """Stop the unused daemons that idle.judge_idle says must go and mark when the others went idle; returns
        when the first of them expires."""
        now = boot_clock()
        processes = daemon_processes(unused.values()) if unused and self.idle.lingers else {}
        since = {top: self.daemons.idle_since(top) for top in unused}
        stacks = [IdleStack(top, now if since[top] is None else min(since[top], now),
                            resident_memory(processes[mountpoint]) if processes else 0)
                  for top, mountpoint in unused.items()]
        verdict = judge_idle(stacks, self.idle, now)
        for stack in stacks:
            try:
                if stack.top in verdict.stop:
                    self.daemons.stop(stack.top, unused[stack.top], verdict.stop[stack.top])
                elif since[stack.top] is None:
                    log.info("erofsfuse for chain %d stays up idle for %gs: no snapshot uses it", stack.top,
                             self.idle.seconds)
                    self.daemons.mark_idle(stack.top, stack.since)
            except (MountError, OSError) as exc:  # try again at the next release
                log.warning("erofsfuse for chain %d: %s", stack.top, exc)
        return verdict.next_expiry

    def _expire_idle(self) -> None:
        with self._lock:
            if not self._closed:
                self.release_unused()

    def mounts(self, key: str) -> list[MountSpec]:
        with self._lock, self.store.transaction() as store:
            snap = store.get(key)
            if snap.kind is Kind.COMMITTED:
                raise FailedPrecondition(f"snapshot {key!r} is committed: only active snapshots and views have mounts")
            chain = store.ancestors(snap.parent_id) if snap.parent_id else []
            if chain:
                self._activate(Mode(snap.mode), chain, flattening_of(snap))
            return self._plan(snap, chain)

    # -- committing -----------------------------------------------------------------------------------------
    def commit(self, name: str, key: str, labels: Mapping[str, str], parent_key: str = "") -> Snapshot:
        with self._lock, self.store.transaction() as store:
            active = store.get(key)
            if active.kind is not Kind.ACTIVE:
                raise FailedPrecondition(f"snapshot {key!r} is not active")
            store.require_absent(name)
            self._new_parent(active, parent_key)
            if active.id in self._committing:
                raise FailedPrecondition(f"snapshot {key!r} is being committed")
            self._committing.add(active.id)
            # the layers under a layer unpacked in kernel mode, which the next layer's snapshot needs again
            unpacked = store.ancestors(active.parent_id) \
                if active.parent_id and unpacking(key) and active.mode == Mode.KERNEL else []
        staged = self.layout.staged_blob(active.id)
        recorded = False
        try:
            blob = self._complete_blob(active.id)
            fault_point("commit:staged")
            usage = blob_usage(blob)
            xattrs = blob_xattrs(blob)
            root = format_verity(blob, self.layout.verity_tree(active.id)) if self.verity is not Verity.OFF else None
            labels = {**labels, VERITY_LABEL: root} if root else labels
            with self._lock:
                with self.store.transaction() as store:
                    if store.find(key) != active:
                        raise NotFound(f"snapshot {key!r} changed while it was committed")
                    store.require_absent(name)
                    committed = store.commit(active, name, dict(labels), self._new_parent(active, parent_key),
                                             usage.size, usage.inodes, root, xattrs)
                recorded = True
                fault_point("commit:recorded")
                self._finish_commit(active.id)
        except BaseException:
            if not recorded:  # the active snapshot stays as it was
                staged.unlink(missing_ok=True)
                self.layout.verity_tree(active.id).unlink(missing_ok=True)
            raise
        finally:
            with self._lock:
                self._committing.discard(active.id)
        log.info("committed %r as %r (#%d): %d bytes, %d inodes", key, name, active.id, usage.size, usage.inodes)
        self.release_unused(outgrown=active.parent_id, unpacked=unpacked)
        return committed

    def _roots(self, chain: Sequence[int]) -> dict[int, str]:
        """The root hashes of the layers of ``chain`` that have a hash tree, from the records."""
        return {layer: root for layer in chain if (root := self.store.by_id(layer).verity)}

    def _serve_stack(self, chain: Sequence[int]) -> None:
        """Make ``chain``'s erofsfuse mount live, its stack file saying what the records know of each layer:
        its root hash, and whether it has xattrs (unknown for layers committed before that was recorded)."""
        records = [self.store.by_id(layer) for layer in chain]
        self.daemons.ensure(chain, {r.id: r.verity for r in records if r.verity},
                            {r.id: r.xattrs for r in records if r.xattrs is not None})

    def _new_parent(self, active: Snapshot, parent_key: str) -> Snapshot | None:
        """The parent after commit: the active's own, or one given for a parentless snapshot (a rebase)."""
        if not parent_key or parent_key == active.parent:
            return self.store.by_id(active.parent_id) if active.parent_id else None
        if active.parent:
            raise InvalidArgument(f"cannot change the parent of {active.key!r} on commit")
        return self.store.committed_parent(parent_key)

    def _complete_blob(self, snapshot_id: int) -> Path:
        """A complete, synced blob for the layer, not yet named ``layer.erofs`` unless containerd's EROFS
        differ wrote it there itself: the name is only taken once the record says committed."""
        written = self.layout.differ_blob(snapshot_id)
        staged = self.layout.staged_blob(snapshot_id)
        if written.is_file():
            log.info("using the layer blob the differ wrote for #%d", snapshot_id)
            if written == self.layout.blob(snapshot_id):
                sync_layer(written)
                return written
            copy_layer(written, staged)
        else:
            build_layer(self.layout.upper_dir(snapshot_id), staged, self.mkfs, self.mkfs_options)
        return staged

    def _finish_commit(self, snapshot_id: int) -> None:
        """After the record says committed: the blob takes its name and the upper dir goes."""
        staged = self.layout.staged_blob(snapshot_id)
        if staged.exists():
            rename_synced(staged, self.layout.blob(snapshot_id))
        fault_point("commit:placed")
        self._retire_upper(snapshot_id)

    def _retire_upper(self, snapshot_id: int) -> None:
        """After commit: the upper dir and the marker go, ``fs/`` comes back empty as the layer's mountpoint, and
        the work dir goes last: while it exists, the retirement is unfinished."""
        self.layout.marker(snapshot_id).unlink(missing_ok=True)
        self.trash.discard(self.layout.upper_dir(snapshot_id))
        fault_point("commit:upper-retired")
        make_dir(self.layout.layer_mountpoint(snapshot_id), 0o755)
        if self.layout.writable_dir(snapshot_id) != self.layout.snapshot_dir(snapshot_id):
            self.trash.discard(self.layout.writable_dir(snapshot_id))
        else:
            self.trash.discard(self.layout.work_dir(snapshot_id))

    # -- removing -----------------------------------------------------------------------------------------
    def remove(self, key: str) -> None:
        with self._lock:
            with self.store.transaction() as store:
                snap = store.get(key)
                if snap.id in self._committing:
                    raise FailedPrecondition(f"cannot remove snapshot {key!r}: it is being committed")
                store.delete(snap)
            fault_point("remove:deleted")
            self.release_unused()
            fault_point("remove:unmounted")
            try:
                self._discard_dirs(snap.id)
            except OSError as exc:  # the record is gone: what is left on disk is Cleanup's
                log.warning("removed %r (#%d) but could not delete its directories: %s", key, snap.id, exc)
            fault_point("remove:discarded")
        log.info("removed %s %r (#%d)", snap.kind.name.lower(), key, snap.id)

    def _discard_dirs(self, snapshot_id: int) -> None:
        for d in {self.layout.snapshot_dir(snapshot_id), self.layout.writable_dir(snapshot_id)}:
            self.trash.discard(d)

    def cleanup(self) -> None:
        """Delete whatever no record owns (directories of unknown ids, stray files, unused mounts) and finish
        what a crash interrupted."""
        self.recover()
        self.trash.drain()

    def recover(self) -> None:
        """Make directories, blobs and mounts agree with the records again (at start and Cleanup).

        A commit whose record was written finishes (its staged blob becomes ``layer.erofs``, its upper dir
        goes); a commit that was not recorded loses its staged and temporary blobs, and its snapshot stays
        active as it was; directories no record owns, and mounts no snapshot needs, go.
        """
        with self._lock:
            self.release_unused()  # first: a directory no record owns may hold a mount
            with self.store.transaction() as store:
                records = store.all()
                live = {s.id for s in records}
                snapshots = [s for s in records if s.id not in self._committing | self._building]
            for path, owner in self.layout.snapshot_dirs().items():
                if owner not in live and owner not in self._committing:
                    log.info("deleting %s, which no snapshot owns", path)
                    try:
                        self.trash.discard(path)
                    except OSError as exc:
                        log.error("cannot delete %s: %s", path, exc)
            for snap in snapshots:
                self._recover_files(snap)

    def _recover_files(self, snap: Snapshot) -> None:
        try:
            for stray in self.layout.snapshot_dir(snap.id).glob(".*.tmp"):
                stray.unlink()
            staged, blob = self.layout.staged_blob(snap.id), self.layout.blob(snap.id)
            if snap.kind is not Kind.COMMITTED:
                if staged.exists():
                    log.info("#%d (%r) was not committed: deleting its staged blob", snap.id, snap.key)
                    staged.unlink()
                return
            if staged.exists() or self.layout.work_dir(snap.id).exists():
                log.info("finishing the commit of #%d (%r)", snap.id, snap.key)
                self._finish_commit(snap.id)
            if not blob.is_file():
                log.error("the layer blob of committed snapshot %r (#%d) is missing: %s", snap.key, snap.id, blob)
        except OSError as exc:  # the next Cleanup tries again; starting must not fail over one snapshot
            log.error("cannot recover the files of %r (#%d): %s", snap.key, snap.id, exc)

    def restore_mounts(self) -> None:
        """Before serving: make sure every chain a live snapshot uses is mounted, adopting what is mounted and
        answers, mounting again what a reboot took away or a dead daemon left. Failures are logged and left to
        the next Mounts call: one bad layer must not keep the snapshotter from starting."""
        with self._lock:
            with self.store.transaction() as store:
                uses = set(chain_uses(store.all()))
            self.daemons.report_adopted()
            for use in sorted(uses, key=lambda u: u.chain):
                try:
                    self._activate(use.mode, use.chain, use.flattening)
                except MountError as exc:
                    log.error("cannot mount chain %d: %s", use.chain[0], exc)

    # -- reading ------------------------------------------------------------------------------------------
    def stat(self, key: str) -> Snapshot:
        with self._lock, self.store.transaction() as store:
            return store.get(key)

    def update(self, key: str, labels: Mapping[str, str], paths: Sequence[str]) -> Snapshot:
        with self._lock, self.store.transaction() as store:
            return store.update_labels(key, dict(labels), list(paths))

    def list(self, expressions: Sequence[str]) -> list[Snapshot]:
        wanted = filters.parse_any(expressions)
        with self._lock, self.store.transaction() as store:
            snapshots = store.all()
        return [s for s in snapshots if filters.match_any(wanted, snapshot_fields(s))]

    def usage(self, key: str) -> Usage:
        """Committed: the blob (size and inodes); active or view: what the upper dir holds now."""
        snap = self.stat(key)
        if snap.kind is Kind.COMMITTED:
            return Usage(snap.size, snap.inodes)
        return tree_usage(self.layout.upper_dir(snap.id))


def open_snapshotter(root: Path, mode: Mode, *, writable_root: Path | None = None, erofsfuse: str | None = None,
                     mkfs: str = "mkfs.erofs", idle: IdlePolicy | None = None,
                     host: HostCapabilities | None = None, flatten_layers: int = 0,
                     verity: Verity = Verity.OFF) -> Snapshotter:
    return Snapshotter(Layout(root.resolve(), writable_root.resolve() if writable_root else None), mode,
                       host=host, erofsfuse=erofsfuse, mkfs=mkfs, idle=idle, flatten_layers=flatten_layers,
                       verity=verity)
