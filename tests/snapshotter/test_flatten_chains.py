"""Flattened chains: in kernel mode a chain deeper than ``--flatten-layers`` is one erofs mount of its fsmeta,
which refers to the layers' blobs as extra devices.

Through the gRPC API: an active snapshot's overlay has that one mount as its single lower, a view is the
fsmeta's own ``erofs`` mount where containerd can perform it, both show what the layers' appliers made; a
layer whose data the fsmeta cannot refer to keeps the chain layer by layer; snapshots containerd unpacks
layers into keep one mount per layer, mounted once for the whole image; the fsmeta is reproducible, accepted
by fsck.erofs, kept across restarts and removed with the chain.

With a real containerd: deep generated images (whiteouts and opaque directories at several depths) are
imported and run in kernel mode layer by layer, kernel mode flattened and fuse mode, and show what
containerd's overlayfs snapshotter shows.
"""

from __future__ import annotations

import contextlib
import errno
import shlex
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from erofsfuse.fuse.stackfile import StackFile, StackLayer
from erofsfuse.host.mounting import MountError
from snapshotter.flatten import build_fsmeta
from snapshotter.layout import Layout
from snapshotter.metadata import Kind, MetadataStore
from snapshotter.planner import (
    FLATTENED_LABEL,
    UNPACK_KEY_PREFIX,
    ChainUse,
    Flattening,
    Mode,
    MountSpec,
    fits_mount_data,
    flattens,
    fsmeta_mount,
    plan_mounts,
    required_mounts,
)
from tests.snapshotter import containerd, fstest, oci
from tests.snapshotter.conftest import Env, mode_param, start_env, stop_env
from tests.snapshotter.deep import deep_image
from tests.snapshotter.mounting import mount_one, mounts_below, unmount_all, unmount_below
from tests.snapshotter.test_containerd import running_stack, wait_for_reconnect
from tests.snapshotter.test_lifecycle import LAYER_1, LAYER_2, build_chain, upper_of
from tests.snapshotter.test_testsuite import mounted

pytestmark = pytest.mark.root

FSCK = shutil.which("fsck.erofs")
LAYER_3 = fstest.apply(
    fstest.create_file("/etc/os-release", b"NAME=third\n", 0o644),
    fstest.remove_all("/xattrs"),
    fstest.create_dir("/opaque/deeper", 0o700),
    fstest.create_file("/opaque/deeper/file", b"x" * 5000, 0o640),
    fstest.link("/opaque/deeper/file", "/opaque/deeper/link"),
)
CHAIN = (LAYER_1, LAYER_2, LAYER_3)


@pytest.fixture
def flat_env(tmp_path: Path) -> Iterator[Env]:
    """Kernel mode, chains of more than two layers flattened."""
    env = start_env(tmp_path / "t", "kernel", ["--flatten-layers", "2"])
    try:
        yield env
    finally:
        stop_env(env, tmp_path / "t")


def snapshot_ids(env: Env) -> dict[str, tuple[int, int | None]]:
    """Every snapshot's id (which names its directory) and its parent's, from the records."""
    with contextlib.closing(sqlite3.connect(f"file:{env.root / 'metadata.db'}?mode=ro", uri=True)) as db:
        return {key: (sid, parent) for key, sid, parent in db.execute("SELECT key, id, parent_id FROM snapshots")}


def chain_of(env: Env, name: str) -> list[int]:
    """Ids of snapshot ``name`` and its parents, nearest first."""
    ids = snapshot_ids(env)
    parents = dict(ids.values())
    chain = [ids[name][0]]
    while parents[chain[-1]] is not None:
        chain.append(parents[chain[-1]])
    return chain


def held_mounts(env: Env) -> list[tuple[str, str]]:
    """(mountpoint relative to the root, fstype) of the mounts the snapshotter holds."""
    return sorted((str(m.target.relative_to(env.root)), m.fstype) for m in mounts_below(env.root / "snapshots"))


def kernel_mounts_files(spec: MountSpec, target: Path) -> bool:
    """Whether the kernel mounts ``spec``'s image files themselves, as containerd would (not where they sit on
    tmpfs, overlayfs or NFS: ENOTBLK)."""
    target.mkdir(parents=True)
    try:
        mount_one(spec.type, spec.source, spec.options, target)
    except MountError as exc:
        if exc.errno != errno.ENOTBLK:
            raise
        return False
    unmount_all(target)
    return True


def lowerdirs(mounts) -> list[str]:
    (overlay,) = mounts
    assert overlay.type == "overlay", overlay
    (lower,) = [o.removeprefix("lowerdir=") for o in overlay.options if o.startswith("lowerdir=")]
    return lower.split(":")


def blobs_bottom_first(env: Env, chain: list[int]) -> list[str]:
    return [str(env.root / "snapshots" / str(i) / "layer.erofs") for i in reversed(chain)]


def unpack_key(number: int, chain_id: str) -> str:
    """A key as containerd names the snapshot it unpacks a layer into."""
    return f"default/{number}/{UNPACK_KEY_PREFIX}{number}-abc {chain_id}"


# -- the rules ---------------------------------------------------------------------------------------------
def test_only_chains_deeper_than_the_setting_outside_unpacking_are_flattened() -> None:
    assert flattens("default/3/rootfs", 3, 2) and not flattens("default/3/rootfs", 2, 2)
    assert not flattens("default/3/rootfs", 500, 0)
    assert not flattens(unpack_key(7, "sha256:ab"), 500, 2)
    assert flattens("default/3/my-extract-x", 3, 2) and flattens("extract-like/3/x", 3, 2)


def test_what_a_flattened_chain_needs_mounted() -> None:
    layout = Layout(Path("/r"))
    assert plan_mounts(9, Kind.ACTIVE, [7, 3, 1], Mode.KERNEL, layout, userxattr=False,
                       flattening=Flattening.MOUNT)[0].options[-1] == "lowerdir=/r/snapshots/7/flat"
    assert plan_mounts(9, Kind.VIEW, [7, 3, 1], Mode.KERNEL, layout, userxattr=False,
                       flattening=Flattening.MOUNT) == [MountSpec("bind", "/r/snapshots/7/flat", ("ro", "rbind"))]
    required = required_mounts([ChainUse(Mode.KERNEL, (7, 3, 1), Flattening.MOUNT),
                                ChainUse(Mode.KERNEL, (8, 3, 1), Flattening.SPEC),
                                ChainUse(Mode.KERNEL, (3, 1))])
    assert required.fsmeta_mounts == {7: (7, 3, 1)} and required.kernel_layers == {3, 1}
    long_chain = list(range(300, 0, -1))
    assert not fits_mount_data(fsmeta_mount(long_chain, layout))
    assert fits_mount_data(fsmeta_mount(long_chain[-3:], layout))


# -- through the gRPC API ------------------------------------------------------------------------------------
def test_an_active_snapshot_on_a_deep_chain_has_its_fsmeta_mount_as_only_lower(flat_env: Env) -> None:
    names = build_chain(flat_env, *CHAIN)
    chain = chain_of(flat_env, names[-1])
    mounts = flat_env.client.prepare("rootfs", names[-1])
    assert lowerdirs(mounts) == [str(flat_env.root / "snapshots" / str(chain[0]) / "flat")]
    assert held_mounts(flat_env) == [(f"snapshots/{chain[0]}/flat", "erofs")]
    assert FLATTENED_LABEL in flat_env.client.stat("rootfs").labels
    with mounted(mounts, flat_env.work / "rootfs") as target:
        fstest.check_directory_equal_with_applier(target, fstest.apply(*CHAIN))
        (target / "written").write_bytes(b"upper\n")  # the overlay is writable as ever
    assert (upper_of(mounts) / "written").read_bytes() == b"upper\n"
    # two layers are not flattened
    assert len(lowerdirs(flat_env.client.prepare("shallow", names[-2]))) == 2


def test_a_view_of_a_deep_chain_is_the_erofs_mount_of_its_fsmeta(flat_env: Env) -> None:
    names = build_chain(flat_env, *CHAIN)
    chain = chain_of(flat_env, names[-1])
    (view,) = flat_env.client.view("view", names[-1])
    fsmeta = flat_env.root / "snapshots" / str(chain[0]) / "fsmeta.erofs"
    spec = MountSpec("erofs", str(fsmeta), ("ro", *(f"device={b}" for b in blobs_bottom_first(flat_env, chain))))
    if kernel_mounts_files(spec, flat_env.work / "probe"):
        assert (view.type, view.source, tuple(view.options)) == (spec.type, spec.source, spec.options)
        assert held_mounts(flat_env) == []  # containerd mounts it itself
    else:  # on tmpfs, say: only the snapshotter's mount, on loop devices, shows it; the view is a bind of that
        flat = flat_env.root / "snapshots" / str(chain[0]) / "flat"
        assert (view.type, view.source, list(view.options)) == ("bind", str(flat), ["ro", "rbind"])
        assert held_mounts(flat_env) == [(f"snapshots/{chain[0]}/flat", "erofs")]
    assert list(flat_env.client.mounts("view")) == [view]
    with mounted([view], flat_env.work / "view") as target:
        fstest.check_directory_equal_with_applier(target, fstest.apply(*CHAIN))


def test_a_layer_the_fsmeta_cannot_refer_to_keeps_the_chain_layer_by_layer(flat_env: Env) -> None:
    """A blob containerd's EROFS differ wrote with mkfs.erofs' defaults keeps small files' tails inline: the
    chain is mounted layer by layer, and the reason is kept so that the next snapshot does not try again."""
    names = build_chain(flat_env, LAYER_1, LAYER_2)
    mounts = flat_env.client.prepare("differ", names[-1])
    with mounted(mounts, flat_env.work / "differ") as target:
        LAYER_3(target)
    upper = upper_of(mounts)  # what the differ converts, beside the marker
    subprocess.run(["mkfs.erofs", "--quiet", str(upper.parent / "layer.erofs"), str(upper)], check=True)
    flat_env.client.commit("inline", "differ")
    chain = chain_of(flat_env, "inline")
    mounts = flat_env.client.prepare("rootfs", "inline")
    assert lowerdirs(mounts) == [str(flat_env.root / "snapshots" / str(i) / "fs") for i in chain]
    refusal = (flat_env.root / "snapshots" / str(chain[0]) / "fsmeta.refused").read_text()
    assert "cannot be flattened" in refusal
    assert not (flat_env.root / "snapshots" / str(chain[0]) / "fsmeta.erofs").exists()
    assert FLATTENED_LABEL not in flat_env.client.stat("rootfs").labels
    with mounted(mounts, flat_env.work / "rootfs") as target:
        fstest.check_directory_equal_with_applier(target, fstest.apply(*CHAIN))


def test_unpacking_mounts_each_layer_once_and_never_flattens(flat_env: Env) -> None:
    """Layers under the one being unpacked are the lower dirs, one by one however deep the chain (containerd
    writes into the upper dir and reads the lower ones); they stay mounted from one layer to the next, and
    a Cleanup (or their pause running out) unmounts them once unpacking is over."""
    parent, seen = "", {}
    for number in range(5):
        key = unpack_key(number, f"sha256:{number}")
        mounts = flat_env.client.prepare(key, parent)
        if parent:
            assert len(lowerdirs(mounts)) == number
            upper = upper_of(mounts)
        else:
            upper = Path(mounts[0].source)
        (upper / f"layer-{number}").write_bytes(b"%d\n" % number)
        layer_mounts = {m.target: m.mount_id for m in mounts_below(flat_env.root / "snapshots")}
        assert {t: seen[t] for t in seen} == {t: layer_mounts[t] for t in seen}  # none mounted again
        seen = layer_mounts
        flat_env.client.commit(f"sha256:{number}", key)
        parent = f"sha256:{number}"
    assert {m.target: m.mount_id for m in mounts_below(flat_env.root / "snapshots")} == seen and len(seen) == 4
    assert not list((flat_env.root / "snapshots").glob("*/fsmeta.*"))
    flat_env.client.cleanup()
    assert held_mounts(flat_env) == []


def test_the_fsmeta_is_reproducible_and_fsck_accepts_it(flat_env: Env, tmp_path: Path) -> None:
    names = build_chain(flat_env, *CHAIN)
    chain = chain_of(flat_env, names[-1])
    flat_env.client.view("view", names[-1])
    fsmeta = flat_env.root / "snapshots" / str(chain[0]) / "fsmeta.erofs"
    again = tmp_path / "again.erofs"
    blobs = blobs_bottom_first(flat_env, chain)
    build_fsmeta(StackFile(tuple(StackLayer(blob) for blob in blobs)), again)
    assert again.read_bytes() == fsmeta.read_bytes()
    if FSCK:
        proc = subprocess.run([FSCK, *(f"--device={blob}" for blob in blobs), "--extract", str(fsmeta)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_restart_keeps_the_fsmeta_mount_and_removing_the_chain_leaves_nothing(flat_env: Env) -> None:
    names = build_chain(flat_env, *CHAIN)
    top = chain_of(flat_env, names[-1])[0]
    mounts = flat_env.client.prepare("rootfs", names[-1])
    with mounted(mounts, flat_env.work / "rootfs") as target:
        before = mounts_below(flat_env.root / "snapshots")
        fsmeta = (flat_env.root / "snapshots" / str(top) / "fsmeta.erofs").stat()
        flat_env.daemon.restart()
        flat_env.client.wait_ready()
        assert mounts_below(flat_env.root / "snapshots") == before  # adopted as it is
        assert list(flat_env.client.mounts("rootfs")) == list(mounts)
        after = (flat_env.root / "snapshots" / str(top) / "fsmeta.erofs").stat()
        assert (after.st_ino, after.st_mtime_ns) == (fsmeta.st_ino, fsmeta.st_mtime_ns)  # never rewritten
        fstest.check_directory_equal_with_applier(target, fstest.apply(*CHAIN))
    # a reboot takes the mount away: the next start mounts it again
    flat_env.daemon.stop()
    unmount_below(flat_env.root / "snapshots")
    flat_env.daemon.start()
    flat_env.client.wait_ready()
    assert held_mounts(flat_env) == [(f"snapshots/{top}/flat", "erofs")]
    with mounted(flat_env.client.mounts("rootfs"), flat_env.work / "rootfs-again") as target:
        fstest.check_directory_equal_with_applier(target, fstest.apply(*CHAIN))

    flat_env.client.remove("rootfs")
    for name in reversed(names):
        flat_env.client.remove(name)
    flat_env.client.cleanup()
    assert held_mounts(flat_env) == []
    assert list((flat_env.root / "snapshots").iterdir()) == []


def test_a_database_from_before_flattening_gains_its_column(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript("""
            CREATE TABLE snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
                parent_id INTEGER REFERENCES snapshots(id), kind INTEGER NOT NULL, created_ns INTEGER NOT NULL,
                updated_ns INTEGER NOT NULL, labels TEXT NOT NULL, mode TEXT, size INTEGER NOT NULL DEFAULT 0,
                inodes INTEGER NOT NULL DEFAULT 0);
            INSERT INTO snapshots (key, kind, created_ns, updated_ns, labels, mode) VALUES ('a', 2, 1, 1, '{}', NULL);
        """)
    store = MetadataStore(path)
    try:
        with store.transaction() as s:
            assert s.get("a").flattening is None
            assert s.create(s.get("a").kind, "b", None, {}, "kernel", "mount").flattening == "mount"
    finally:
        store.close()


# -- with containerd -----------------------------------------------------------------------------------------
DEPTH = 130
CASES = {  # name: (snapshotter mode, its extra arguments)
    "kernel-layers": ("kernel", ("--flatten-layers", "0")),
    "kernel-flattened": ("kernel", ("--flatten-layers", "32")),
    "fuse": ("fuse", ()),
}
needs_containerd = [
    pytest.mark.skipif(containerd.available() is not None, reason=str(containerd.available())),
    pytest.mark.skipif(not oci.BUSYBOX.is_file(), reason="needs a static busybox (Debian: busybox-static)"),
]


def case_param(name: str, *marks):
    return pytest.param(name, marks=[*marks, *mode_param(CASES[name][0]).marks], id=name)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    made: dict[int, oci.Image] = {}

    def get(depth: int) -> oci.Image:
        if depth not in made:
            made[depth], depths = deep_image(tmp_path_factory.mktemp(f"deep{depth}"), depth)
            assert len(depths["whiteout"]) >= 3 and len(depths["opaque"]) >= 2, depths
        return made[depth]

    return get


def snapshot_mounts(daemon: containerd.Containerd, snapshotter_name: str, key: str) -> tuple[str, str, list[str]]:
    """(type, source, options) of a snapshot, as ``ctr snapshots mounts`` prints them."""
    command = shlex.split(daemon.ctr("snapshots", "--snapshotter", snapshotter_name, "mounts", "/target",
                                     key).stdout)
    assert command[:2] == ["mount", "-t"], command
    return command[2], command[3], command[command.index("-o") + 1].split(",")


@contextlib.contextmanager
def rootfs(daemon: containerd.Containerd, snapshotter_name: str, ref: str, target: Path):
    """A created (not started) container's rootfs, mounted on the host as ctr says; yields its mount spec."""
    container = f"rootfs-{snapshotter_name}"
    daemon.ctr("containers", "create", "--snapshotter", snapshotter_name, ref, container)
    try:
        with mounted_snapshot(daemon, snapshotter_name, container, target) as spec:
            yield spec
    finally:
        daemon.ctr("containers", "rm", container, check=False)


@contextlib.contextmanager
def image_snapshot(daemon: containerd.Containerd, snapshotter_name: str, image: oci.Image, target: Path):
    """An active snapshot on an image's layers, mounted on the host. Not a container: containerd 1.7 mounts a
    container's rootfs read-only to read /etc/group, its upper directory one more lower, and overlayfs takes
    at most 500. Not ``ctr snapshots view``: that sets no gc.root label, so the garbage collection that
    removing the last container scheduled may remove the view before it is mounted."""
    key = f"expected-{snapshotter_name}"
    daemon.ctr("snapshots", "--snapshotter", snapshotter_name, "prepare", key, image.chain_id)
    try:
        with mounted_snapshot(daemon, snapshotter_name, key, target):
            yield
    finally:
        daemon.ctr("snapshots", "--snapshotter", snapshotter_name, "rm", key, check=False)


@contextlib.contextmanager
def mounted_snapshot(daemon: containerd.Containerd, snapshotter_name: str, key: str, target: Path):
    """A snapshot mounted on the host as ctr says; yields its mount spec."""
    kind, source, options = snapshot_mounts(daemon, snapshotter_name, key)
    target.mkdir()
    mount_one(kind, source, options, target)
    try:
        yield kind, source, options
    finally:
        unmount_all(target)


def check_deep_image(case: str, depth: int, image: oci.Image, base: Path, *, run_overlayfs: bool) -> None:
    mode, extra = CASES[case]
    with running_stack(base / "e2e", mode, *extra) as (daemon, snapshotter):
        for name in ("overlayfs", "erofs"):
            daemon.ctr("images", "import", "--snapshotter", name, str(image.archive), timeout=3600)
        ref = image.refs["root"]
        actual = daemon.ctr("run", "--rm", "--snapshotter", "erofs", ref, "erofs-run").stdout
        if run_overlayfs:  # containerd cannot mount overlayfs' own lowerdir list past about 240 layers
            assert actual == daemon.ctr("run", "--rm", "--snapshotter", "overlayfs", ref, "overlay-run").stdout
        assert "/bin/busybox" in actual
        with image_snapshot(daemon, "overlayfs", image, base / "expected"), \
                rootfs(daemon, "erofs", ref, base / "actual") as (kind, _, options):
            fstest.check_directory_equal(base / "expected", base / "actual")
            lowers = next(o for o in options if o.startswith("lowerdir=")).removeprefix("lowerdir=").split(":")
            erofs_mounts = [m for m in mounts_below(snapshotter.root) if m.fstype == "erofs"]
        assert kind == "overlay"
        if case == "kernel-layers":
            assert len(lowers) == depth and len(erofs_mounts) == depth
        elif case == "kernel-flattened":
            # one fsmeta mount; the layer mounts (fs/) that unpacking kept for its next layer may still be there
            # until containerd's next Cleanup or their pause ends, whichever comes first
            assert len(lowers) == 1 and lowers[0].endswith("/flat")
            assert [m.target.name for m in erofs_mounts if m.target.name != "fs"] == ["flat"]
        else:
            assert len(lowers) == 1 and lowers[0].endswith("/stack") and erofs_mounts == []
        if case == "kernel-flattened":
            snapshotter.restart()
            wait_for_reconnect(daemon)
            assert daemon.ctr("run", "--rm", "--snapshotter", "erofs", ref, "after-restart").stdout == actual
        daemon.ctr("images", "rm", "--sync", ref)
        assert mounts_below(snapshotter.root) == []
        assert list((snapshotter.root / "snapshots").iterdir()) == []


@pytest.mark.parametrize("case", [case_param(name, *needs_containerd) for name in CASES])
def test_a_deep_image_shows_what_overlayfs_shows(case: str, images, tmp_path: Path) -> None:
    check_deep_image(case, DEPTH, images(DEPTH), tmp_path, run_overlayfs=True)


@pytest.mark.parametrize("case", [case_param("kernel-flattened", *needs_containerd),
                                  case_param("fuse", *needs_containerd, pytest.mark.slow)])  # 500 daemons unpack it
def test_an_image_of_500_layers_runs(case: str, images, tmp_path: Path) -> None:
    """overlayfs' limit: containerd's own overlayfs snapshotter cannot run it (the lowerdir list is longer than
    a page even relative to its root), the project's mount helper mounts its layers to compare."""
    check_deep_image(case, 500, images(500), tmp_path, run_overlayfs=False)
