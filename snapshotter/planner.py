"""Mount planning: which mode serves a snapshot's parents, what mounts a client gets, what must stay mounted.

Everything here is a pure function of the snapshot chain, the mode and the host's capabilities, so the
rules can be read and tested in one place:

* kernel mode: every committed layer is mounted read-only by the snapshotter (``erofs``) at its ``fs/``;
  clients get an ``overlay`` whose lowerdirs are those mounts (nearest parent first), with upperdir and
  workdir for an active snapshot, a read-only bind for a view of a single layer and a bind of the empty
  upper dir when there are no parents.
* fuse mode: one erofsfuse daemon serves a whole committed chain as one merged tree at the top layer's
  ``stack/``; clients get an ``overlay`` with that single lowerdir (or a read-only bind for a view).
* auto: kernel when the host allows it and the kernel accepts the layers, fuse otherwise.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from erofsfuse.fuse.stackfile import StackFile, StackLayer

from .layout import Layout
from .metadata import Kind


class Mode(enum.StrEnum):
    AUTO = "auto"
    KERNEL = "kernel"
    FUSE = "fuse"


MODE_LABEL = "containerd.io/snapshot/erofs.mode"
MODE_REASON_LABEL = "containerd.io/snapshot/erofs.mode-reason"


@dataclass(frozen=True)
class HostCapabilities:
    erofs_in_kernel: bool  # "erofs" is listed in /proc/filesystems
    privileged: bool  # CAP_SYS_ADMIN in the initial user namespace
    in_user_namespace: bool

    def kernel_blocker(self) -> str | None:
        """Why this host cannot mount EROFS with the kernel, or None if it can."""
        if self.in_user_namespace:
            return "running in a user namespace, where the kernel does not mount erofs"
        if not self.privileged:
            return "not privileged (no CAP_SYS_ADMIN)"
        if not self.erofs_in_kernel:
            return "erofs is not in /proc/filesystems"
        return None


@dataclass(frozen=True)
class ModeChoice:
    mode: Mode  # KERNEL or FUSE, never AUTO
    reason: str

    def labels(self) -> dict[str, str]:
        return {MODE_LABEL: self.mode.value, MODE_REASON_LABEL: self.reason}


def choose_mode(configured: Mode, host: HostCapabilities, kernel_refusal: str | None = None) -> ModeChoice:
    """The mode for one chain. ``kernel_refusal`` says why the kernel rejected one of its layers, if it did."""
    if configured is not Mode.AUTO:
        return ModeChoice(configured, f"mode {configured.value} is configured")
    blocker = host.kernel_blocker()
    if blocker:
        return ModeChoice(Mode.FUSE, blocker)
    if kernel_refusal:
        return ModeChoice(Mode.FUSE, kernel_refusal)
    return ModeChoice(Mode.KERNEL, "the kernel mounts every layer")


@dataclass(frozen=True)
class MountSpec:
    """One entry of the mounts returned to containerd (containerd.types.Mount)."""

    type: str
    source: str
    options: tuple[str, ...]


def _bind(source: str, *, readonly: bool) -> MountSpec:
    return MountSpec("bind", source, ("ro" if readonly else "rw", "rbind"))


def lower_dirs(mode: Mode, chain: Sequence[int], layout: Layout) -> list[str]:
    """The overlay lower directories serving ``chain`` (committed ids, nearest parent first)."""
    if mode is Mode.KERNEL:
        return [str(layout.layer_mountpoint(i)) for i in chain]
    return [str(layout.stack_mountpoint(chain[0]))]


def plan_mounts(snapshot_id: int, kind: Kind, chain: Sequence[int], mode: Mode | None, layout: Layout,
                *, userxattr: bool) -> list[MountSpec]:
    """Mounts for an active or view snapshot whose parents are ``chain`` (nearest first)."""
    if not chain:
        return [_bind(str(layout.upper_dir(snapshot_id)), readonly=kind is Kind.VIEW)]
    assert mode in (Mode.KERNEL, Mode.FUSE), mode
    lowers = lower_dirs(mode, chain, layout)
    if kind is Kind.VIEW and len(lowers) == 1:
        return [_bind(lowers[0], readonly=True)]
    options: list[str] = ["userxattr"] if userxattr else []
    if kind is Kind.ACTIVE:
        options += [f"workdir={layout.work_dir(snapshot_id)}", f"upperdir={layout.upper_dir(snapshot_id)}"]
    options.append("lowerdir=" + ":".join(lowers))
    return [MountSpec("overlay", "overlay", tuple(options))]


@dataclass(frozen=True)
class ChainUse:
    """A live (active or view) snapshot's need: its parent chain, served in ``mode``."""

    mode: Mode
    chain: tuple[int, ...]  # nearest parent first


@dataclass(frozen=True)
class RequiredMounts:
    kernel_layers: frozenset[int]  # layers that must stay mounted at their fs/
    fuse_stacks: dict[int, tuple[int, ...]]  # top layer id -> its chain, for stacks that must keep running
    users: dict[int, int]  # top layer id -> number of snapshots using that stack (its reference count)


def required_mounts(uses: Iterable[ChainUse]) -> RequiredMounts:
    """What must stay mounted for the live snapshots; everything else under the root may go."""
    kernel: set[int] = set()
    stacks: dict[int, tuple[int, ...]] = {}
    users: dict[int, int] = {}
    for use in uses:
        if not use.chain:
            continue
        if use.mode is Mode.KERNEL:
            kernel.update(use.chain)
        else:
            stacks[use.chain[0]] = use.chain
            users[use.chain[0]] = users.get(use.chain[0], 0) + 1
    return RequiredMounts(frozenset(kernel), stacks, users)


def stack_document(chain: Sequence[int], layout: Layout) -> dict:
    """The erofsfuse stack file for ``chain`` (nearest first), as JSON: layers bottom first."""
    return StackFile(tuple(StackLayer(str(layout.blob(i))) for i in reversed(chain))).to_document()
