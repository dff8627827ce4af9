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

Kernel mode flattens a chain deeper than ``flatten_layers``: one metadata-only EROFS image of the whole
chain (its fsmeta, ``flatten.py``) refers to every layer's blob as an extra device, so a single ``erofs``
mount replaces one mount per layer and the overlay's ``lowerdir=`` has one entry however deep the chain.
Clients get an overlay on the snapshotter's mount of the fsmeta (``flat/``), and a view the ``erofs``
mount of the fsmeta itself, which containerd performs, where its options fit in the page mount(2) takes
and the kernel mounts the fsmeta file directly; a bind of ``flat/`` otherwise. Snapshots that containerd
unpacks a layer into keep one mount per layer: it writes the layer into the upper dir itself and only
reads the lower dirs, and an fsmeta for every prefix of an image would make unpacking quadratic.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from erofsfuse.erofs.verity import VeritySpec
from erofsfuse.fuse.stackfile import StackFile, StackLayer
from erofsfuse.host.mounting import PAGE_SIZE

from .layout import Layout
from .metadata import Kind


class Mode(enum.StrEnum):
    AUTO = "auto"
    KERNEL = "kernel"
    FUSE = "fuse"


MODE_LABEL = "containerd.io/snapshot/erofs.mode"
MODE_REASON_LABEL = "containerd.io/snapshot/erofs.mode-reason"
FLATTENED_LABEL = "containerd.io/snapshot/erofs.flattened"
VERITY_LABEL = "containerd.io/snapshot/erofs.verity"  # a committed layer's dm-verity root hash (hex)
VERIFIED_LABEL = "containerd.io/snapshot/erofs.verified"  # whether a snapshot's parents are read verified, and why
# containerd names the snapshot it unpacks a layer into "extract-<unique part> <chain id>" (after its
# "<namespace>/<number>/" prefix)
UNPACK_KEY_PREFIX = "extract-"


class Verity(enum.StrEnum):
    """Whether committed layers get a dm-verity tree, and whether serving them must check it.

    ``on``: every layer committed gets one; fuse mode checks every block read against it, kernel mode mounts
    the layers as they are (checking needs dm-verity). ``required``: the same, and every chain is served in
    fuse mode, checked; a chain with a layer that has no tree (committed before) is refused.
    """

    OFF = "off"
    ON = "on"
    REQUIRED = "required"


def verified_labels(mode: Mode, chain: Sequence[int], roots: Mapping[int, str]) -> dict[str, str]:
    """What a snapshot's ``erofs.verified`` label says about the layers under it (none when none has a tree)."""
    have = sum(1 for layer in chain if layer in roots)
    if not have:
        return {}
    if mode is not Mode.FUSE:
        return {VERIFIED_LABEL: "no: kernel mode mounts the layers without dm-verity"}
    if have < len(chain):
        return {VERIFIED_LABEL: f"partly: {have} of {len(chain)} layers have a hash tree, erofsfuse checks those"}
    return {VERIFIED_LABEL: f"yes: erofsfuse checks every block of the {len(chain)} layers against their root hashes"}


class Flattening(enum.StrEnum):
    """How a kernel-mode chain reaches a snapshot's clients."""

    NONE = "none"  # one erofs mount per layer (fuse mode: the chain's erofsfuse mount)
    MOUNT = "mount"  # the snapshotter's one erofs mount of the chain's fsmeta at the top layer's flat/
    SPEC = "spec"  # a view: the erofs mount of the fsmeta itself, which containerd performs


def unpacking(key: str) -> bool:
    """Whether ``key`` names a snapshot containerd unpacks an image layer into."""
    return key.split("/", 2)[-1].startswith(UNPACK_KEY_PREFIX)


def flattens(key: str, depth: int, flatten_layers: int) -> bool:
    """Whether a new snapshot ``key`` on a chain of ``depth`` layers gets the chain flattened in kernel mode
    (``flatten_layers`` 0: never)."""
    return 0 < flatten_layers < depth and not unpacking(key)


def flattened_labels(flattening: Flattening, depth: int) -> dict[str, str]:
    if flattening is Flattening.NONE:
        return {}
    how = "the erofs mount of its fsmeta" if flattening is Flattening.SPEC else "the overlay of its fsmeta's mount"
    return {FLATTENED_LABEL: f"{depth} layers in one fsmeta; clients get {how}"}


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


def choose_mode(configured: Mode, host: HostCapabilities, kernel_refusal: str | None = None,
                verity: Verity = Verity.OFF) -> ModeChoice:
    """The mode for one chain. ``kernel_refusal`` says why the kernel rejected one of its layers, if it did."""
    if configured is not Mode.AUTO:
        return ModeChoice(configured, f"mode {configured.value} is configured")
    if verity is Verity.REQUIRED:
        return ModeChoice(Mode.FUSE, "verity is required, and only erofsfuse checks the layers' blocks")
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


def fsmeta_devices(chain: Sequence[int], layout: Layout) -> list[str]:
    """The extra devices of a chain's fsmeta: its layers' blobs, bottom first (each holds its files' data)."""
    return [str(layout.blob(i)) for i in reversed(chain)]


def fsmeta_mount(chain: Sequence[int], layout: Layout) -> MountSpec:
    """The one erofs mount that shows a flattened chain."""
    devices = tuple(f"device={d}" for d in fsmeta_devices(chain, layout))
    return MountSpec("erofs", str(layout.fsmeta(chain[0])), ("ro", *devices))


def fits_mount_data(spec: MountSpec) -> bool:
    """Whether mount(2) takes the options of ``spec`` (containerd and runc mount with it): at most a page."""
    return len(",".join(spec.options).encode()) < PAGE_SIZE


def lower_dirs(mode: Mode, chain: Sequence[int], layout: Layout,
               flattening: Flattening = Flattening.NONE) -> list[str]:
    """The overlay lower directories serving ``chain`` (committed ids, nearest parent first)."""
    if mode is Mode.FUSE:
        return [str(layout.stack_mountpoint(chain[0]))]
    if flattening is Flattening.NONE:
        return [str(layout.layer_mountpoint(i)) for i in chain]
    return [str(layout.fsmeta_mountpoint(chain[0]))]


def plan_mounts(snapshot_id: int, kind: Kind, chain: Sequence[int], mode: Mode | None, layout: Layout,
                *, userxattr: bool, flattening: Flattening = Flattening.NONE) -> list[MountSpec]:
    """Mounts for an active or view snapshot whose parents are ``chain`` (nearest first)."""
    if not chain:
        return [_bind(str(layout.upper_dir(snapshot_id)), readonly=kind is Kind.VIEW)]
    assert mode in (Mode.KERNEL, Mode.FUSE), mode
    if flattening is Flattening.SPEC:
        assert kind is Kind.VIEW, kind
        return [fsmeta_mount(chain, layout)]
    lowers = lower_dirs(mode, chain, layout, flattening)
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
    flattening: Flattening = Flattening.NONE


@dataclass(frozen=True)
class RequiredMounts:
    kernel_layers: frozenset[int]  # layers that must stay mounted at their fs/
    fuse_stacks: dict[int, tuple[int, ...]]  # top layer id -> its chain, for stacks that must keep running
    users: dict[int, int]  # top layer id -> number of snapshots using that stack (its reference count)
    fsmeta_mounts: dict[int, tuple[int, ...]] = field(default_factory=dict)  # top -> chain, fsmeta mounted at flat/


def required_mounts(uses: Iterable[ChainUse]) -> RequiredMounts:
    """What must stay mounted for the live snapshots; everything else under the root may go."""
    kernel: set[int] = set()
    stacks: dict[int, tuple[int, ...]] = {}
    users: dict[int, int] = {}
    flattened: dict[int, tuple[int, ...]] = {}
    for use in uses:
        if not use.chain:
            continue
        if use.mode is Mode.FUSE:
            stacks[use.chain[0]] = use.chain
            users[use.chain[0]] = users.get(use.chain[0], 0) + 1
        elif use.flattening is Flattening.NONE:
            kernel.update(use.chain)
        elif use.flattening is Flattening.MOUNT:
            flattened[use.chain[0]] = use.chain
    return RequiredMounts(frozenset(kernel), stacks, users, flattened)


def chain_stack(chain: Sequence[int], layout: Layout, roots: Mapping[int, str] | None = None,
                xattrs: Mapping[int, bool] | None = None) -> StackFile:
    """The layers of ``chain`` (nearest first) as a stack: bottom first, those with a root hash in ``roots``
    read through their hash trees, each saying whether it has xattrs the stack shows where ``xattrs`` knows."""
    roots, xattrs = roots or {}, xattrs or {}
    return StackFile(tuple(
        StackLayer(str(layout.blob(i)), xattrs=xattrs.get(i),
                   verity=VeritySpec(bytes.fromhex(roots[i]), str(layout.verity_tree(i))) if i in roots else None)
        for i in reversed(chain)))


def stack_document(chain: Sequence[int], layout: Layout, roots: Mapping[int, str] | None = None,
                   xattrs: Mapping[int, bool] | None = None) -> dict:
    """The erofsfuse stack file for ``chain`` (nearest first), as JSON."""
    return chain_stack(chain, layout, roots, xattrs).to_document()
