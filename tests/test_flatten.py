"""The fsmeta of a chain of layers (``snapshotter.flatten`` on ``erofsfuse.erofs.writer``) against the kernel.

Chains of generated layers (files, directories at several depths, symlinks, hard links, devices, fifos,
sockets, xattrs of every namespace, owners, nanosecond times, and in the upper layers whiteouts, opaque
directories and files replaced by directories and back) are built with mkfs.erofs in the forms an fsmeta
can refer to. The reference for a chain is the kernel's overlay of the kernel's mounts of its layers;
the fsmeta, mounted by the kernel with one ``device=`` per layer, must show the same tree, erofsfuse must
serve the fsmeta exactly as the kernel does, and fsck.erofs must accept it.

Two things differ by design between an fsmeta and an overlay and are left out of the comparison: a
directory's size and blocks (overlayfs shows those of the topmost layer's directory, the fsmeta's
directory holds the merged listing) and the order of a merged listing (overlayfs lists the lowest layer's
names first, an EROFS directory is sorted).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from erofsfuse.erofs.image import ErofsImage
from erofsfuse.erofs.writer import ChunkRef, Chunks, Device, InodeSpec, UnwritableTree, write_image
from erofsfuse.fuse.stackfile import StackFile, StackLayer
from snapshotter.flatten import MKFS_OPTIONS, NotFlattenable, build_fsmeta

from .fusemount import fuse_mount
from .kernel import erofs_mount, overlay_mount
from .trees import describe_image, describe_path, diff_trees

MKFS = shutil.which("mkfs.erofs")
FSCK_TOOLS = [tool for tool in (shutil.which("fsck.erofs"), "/opt/erofs-utils/bin/fsck.erofs")
              if tool and os.access(tool, os.X_OK)]
pytestmark = [
    pytest.mark.skipif(MKFS is None, reason="mkfs.erofs is not installed"),
    pytest.mark.root,
]

CHUNKED_OPTIONS = ("--chunksize=4096",)  # the other form an fsmeta can refer to: chunk-based files
DEFAULT_NS = 1_600_000_000 * 10**9  # most entries' time: the fsmeta keeps those inodes compact
FILE_SIZES = (0, 1, 100, 4095, 4096, 4097, 12288, 20000, 70000)
FILE_MODES = (0o644, 0o755, 0o600, 0o4755, 0o2750, 0o1777, 0o000)
DIR_MODES = (0o755, 0o700, 0o1777, 0o2755, 0o555)
OWNERS = ((0, 0), (0, 0), (1000, 1000), (70000, 5), (4000000000, 65536))
# a POSIX ACL in the xattr wire format: user::rw- user:1000:r-- group::r-- mask::rw- other::r--
ACL = struct.pack("<I" + "HHI" * 5, 2, 0x01, 6, 0xFFFFFFFF, 0x02, 4, 1000, 0x04, 4, 0xFFFFFFFF,
                  0x10, 6, 0xFFFFFFFF, 0x20, 4, 0xFFFFFFFF)
# security.capability, version 2: cap_net_bind_service permitted and effective
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


# -- generated chains -----------------------------------------------------------------------
class ChainGenerator:
    """Layer trees on disk, each changing the merged view of the ones below in the ways images do.

    ``view`` maps every visible path (``""`` is the root) to the layer that provides it and whether it is
    a directory, so that whiteouts, opaque directories and replacements aim at what is really below.
    """

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.view: dict[str, tuple[int, bool]] = {"": (0, True)}
        self.counter = 0
        self.depths: dict[str, set[int]] = {"whiteout": set(), "opaque": set()}  # where they were made

    def layer(self, root: Path, index: int, operations: int) -> None:
        self.root, self.index = root, index
        self.made: dict[str, bool] = {"": True}  # what this layer holds: path -> is a directory
        self.blocked: set[str] = set()  # this layer's non-directories and whiteouts: nothing may go below
        root.mkdir()
        for _ in range(operations):
            self._operation()
        for rel in sorted((p for p, is_dir in self.made.items() if is_dir), key=lambda p: -p.count("/")):
            self._attributes(self._path(rel), directory=True, root=not rel)

    def _operation(self) -> None:
        rng = self.rng
        choices = ["file"] * 5 + ["dir"] * 2 + ["symlink", "special", "hardlink"]
        if self.index:
            choices += ["whiteout"] * 2 + ["opaque", "replace"]
        kind = rng.choice(choices)
        if kind in ("whiteout", "opaque", "replace"):
            target = self._lower_target(directories=kind == "opaque")
            if target is None:
                return
            getattr(self, f"_{kind}")(target)
        elif kind == "hardlink":
            first, second = self._new_path(), self._new_path()
            self._file(first)
            os.link(self._path(first), self._path(second))
            self._add(second, False)
        else:
            getattr(self, f"_{kind}")(self._new_path())

    # -- picking places ----------------------------------------------------------------------
    def _free(self, rel: str) -> bool:
        """No part of ``rel`` is something this layer already made a non-directory or whiteout."""
        parts = rel.split("/")
        return not any("/".join(parts[:i]) in self.blocked for i in range(1, len(parts) + 1))

    def _new_path(self) -> str:
        """A new name in a visible directory (its parents made in this layer)."""
        dirs = sorted(p for p, (_, is_dir) in self.view.items() if is_dir and self._free(p))
        parent = self.rng.choice(dirs)
        self.counter += 1
        name = self.rng.choice([f"n{self.counter}", f"entry-{self.counter}", f"{self.counter}-" + "x" * 200,
                                f"\u00e9t\u00e9-{self.counter}", f"sp ace {self.counter}"])
        self._parents(parent)
        return f"{parent}/{name}" if parent else name

    def _lower_target(self, directories: bool) -> str | None:
        """A visible path that a layer below provides, untouched by this layer so far (mostly a non-directory,
        so that the tree keeps growing)."""
        found = sorted(p for p, (layer, is_dir) in self.view.items()
                       if p and layer < self.index and p not in self.made and self._free(p)
                       and (is_dir or not directories))
        if not directories and self.rng.random() < 0.8:
            found = [p for p in found if not self.view[p][1]] or found
        if not found:
            return None
        target = self.rng.choice(found)
        self._parents(target.rpartition("/")[0])
        return target

    def _parents(self, rel: str) -> None:
        """Make ``rel`` and its parents in this layer (they merge with the directories below)."""
        if not rel:
            return
        walked = []
        for part in rel.split("/"):
            walked.append(part)
            sub = "/".join(walked)
            if sub not in self.made:
                self._path(sub).mkdir()
                self.made[sub] = True

    def _path(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def _add(self, rel: str, is_dir: bool) -> None:
        self.made[rel] = is_dir
        self.view[rel] = (self.index, is_dir)
        if not is_dir:
            self.blocked.add(rel)

    def _drop_below(self, rel: str) -> None:
        for path in [p for p in self.view if p.startswith(rel + "/")]:
            del self.view[path]

    # -- entries -----------------------------------------------------------------------------
    def _file(self, rel: str) -> None:
        path = self._path(rel)
        path.write_bytes(self.rng.randbytes(self.rng.choice(FILE_SIZES)))
        self._attributes(path)
        self._add(rel, False)

    def _dir(self, rel: str) -> None:
        self._path(rel).mkdir()
        self._add(rel, True)
        for _ in range(self.rng.randrange(3)):
            self._file(f"{rel}/f{self.rng.randrange(1000)}-{len(self.made)}")

    def _symlink(self, rel: str) -> None:
        target = self.rng.choice(["../somewhere", "/absolute/target", "x" * self.rng.randrange(1, 1500), "n1"])
        os.symlink(target, self._path(rel))
        self._attributes(self._path(rel), link=True)
        self._add(rel, False)

    def _special(self, rel: str) -> None:
        path = self._path(rel)
        kind = self.rng.choice(["chr", "blk", "fifo", "socket"])
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "socket":
            os.mknod(path, stat.S_IFSOCK | 0o600)
        else:
            number = os.makedev(*self.rng.choice([(1, 3), (8, 1), (4095, 1048575), (254, 256)]))
            os.mknod(path, (stat.S_IFCHR if kind == "chr" else stat.S_IFBLK) | 0o600, number)
        self._attributes(path)
        self._add(rel, False)

    def _whiteout(self, rel: str) -> None:
        os.mknod(self._path(rel), stat.S_IFCHR | 0o600, os.makedev(0, 0))
        self.depths["whiteout"].add(rel.count("/"))
        self._drop_below(rel)
        del self.view[rel]
        self.made[rel] = False
        self.blocked.add(rel)

    def _opaque(self, rel: str) -> None:
        self._path(rel).mkdir()
        os.setxattr(self._path(rel), "trusted.overlay.opaque", b"y")
        self.depths["opaque"].add(rel.count("/"))
        self._drop_below(rel)
        self._add(rel, True)
        self._file(f"{rel}/in-opaque-{self.index}")

    def _replace(self, rel: str) -> None:
        """A file over a directory, a directory over a file, or new contents for a file."""
        self._drop_below(rel)
        if self.view[rel][1] or self.rng.random() < 0.5:
            self._file(rel)
        else:
            self._dir(rel)

    def _attributes(self, path: Path, directory: bool = False, link: bool = False, root: bool = False) -> None:
        """Mode, ACLs, xattrs (user ones only where Linux allows them), owner and time; a directory's last."""
        rng = self.rng
        if not link:
            os.chmod(path, rng.choice(DIR_MODES if directory else FILE_MODES))
            if rng.random() < 0.2:
                os.setxattr(path, "system.posix_acl_access", ACL)
            if directory and rng.random() < 0.2:
                os.setxattr(path, "system.posix_acl_default", ACL)
        if directory or stat.S_ISREG(os.lstat(path).st_mode):
            if rng.random() < 0.3:
                os.setxattr(path, "user.shared", b"the same on many inodes")
            if rng.random() < 0.2:
                os.setxattr(path, "user.note", rng.randbytes(rng.randrange(0, 300)))
            if not directory and rng.random() < 0.1:
                os.setxattr(path, "security.capability", CAPABILITY)
        if rng.random() < 0.2:
            os.setxattr(path, "trusted.t" + "n" * rng.randrange(100), rng.randbytes(20), follow_symlinks=False)
        uid, gid = (0, 0) if root else rng.choice(OWNERS)
        os.chown(path, uid, gid, follow_symlinks=False)
        ns = DEFAULT_NS if rng.random() < 0.6 else rng.randrange(-(2**31) * 10**9, 13_000_000_000 * 10**9)
        os.utime(path, ns=(ns, ns), follow_symlinks=False)


def make_chain(base: Path, count: int, seed: int = 1) -> tuple[list[str], dict[str, set[int]]]:
    """``count`` layer images under ``base`` (bottom first), made by mkfs.erofs in a referable form: most
    with ``MKFS_OPTIONS``, every third one chunk-based; and the depths of the whiteouts and opaque directories."""
    generator = ChainGenerator(seed)
    images = []
    for index in range(count):
        tree = base / f"layer{index:03d}"
        generator.layer(tree, index, 24 if index == 0 else 5)
        image = base / f"layer{index:03d}.erofs"
        options = CHUNKED_OPTIONS if index % 3 == 2 else MKFS_OPTIONS
        subprocess.run([MKFS, "--quiet", *options, str(image), str(tree)], check=True, capture_output=True)
        images.append(str(image))
    return images, generator.depths


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A chain of a given depth (its layers, fsmeta, fsmeta devices and generator depths), made once per module."""
    made: dict[int, tuple[list[str], str, list[str], dict[str, set[int]]]] = {}

    def get(count: int) -> tuple[list[str], str, list[str], dict[str, set[int]]]:
        if count not in made:
            base = tmp_path_factory.mktemp(f"chain{count}")
            layers, depths = make_chain(base, count)
            fsmeta = base / "fsmeta.erofs"
            made[count] = (layers, str(fsmeta), build_fsmeta(stack_of(layers), fsmeta).devices, depths)
        return made[count]

    return get


def stack_of(layers: list[str]) -> StackFile:
    return StackFile(tuple(StackLayer(layer) for layer in layers))


@contextlib.contextmanager
def overlay_of(chain: StackFile):
    """What the kernel shows for a chain: its one layer mounted, or the overlay of its layers' mounts."""
    with contextlib.ExitStack() as stack:
        mounts = [stack.enter_context(erofs_mount(layer.image, layer.devices)) for layer in chain.layers]
        yield mounts[0] if len(mounts) == 1 else stack.enter_context(overlay_mount(mounts))


def without_directory_sizes(tree: dict[str, dict]) -> dict[str, dict]:
    for entry in tree.values():
        if entry.get("type") == "dir":
            entry["size"] = entry["blocks"] = None
    return tree


def overlay_and_fsmeta(chain: StackFile, fsmeta: str, devices: list[str]) -> tuple[dict, dict]:
    """The kernel's view of the chain and of its fsmeta, without what differs by design."""
    with overlay_of(chain) as expected_root, erofs_mount(fsmeta, devices) as flat:
        return without_directory_sizes(describe_path(expected_root)), without_directory_sizes(describe_path(flat))


# -- the chain's fsmeta ------------------------------------------------------------------------------
DEPTHS = [1, 2, 60, 130, pytest.param(500, marks=pytest.mark.slow)]


@pytest.mark.parametrize("count", DEPTHS)
def test_kernel_mount_of_the_fsmeta_shows_the_overlay_of_the_layers(chain, count):
    layers, fsmeta, devices, depths = chain(count)
    if count >= 60:
        assert len(depths["whiteout"]) >= 3 and len(depths["opaque"]) >= 2, depths
    assert devices == layers  # mkfs.erofs keeps each layer's data in its image: the image is the device
    expected, actual = overlay_and_fsmeta(stack_of(layers), fsmeta, devices)
    assert len(expected) > 30 + count
    assert not diff_trees(expected, actual, sorted_entries=True)


@pytest.mark.parametrize("count", DEPTHS)
def test_erofsfuse_serves_the_fsmeta_as_the_kernel_does(chain, count):
    _, fsmeta, devices, _ = chain(count)
    with erofs_mount(fsmeta, devices) as kernel, fuse_mount(fsmeta, devices) as fuse:
        expected, actual = describe_path(kernel), describe_path(fuse)
    assert not diff_trees(expected, actual)
    with ErofsImage(fsmeta, devices) as img:
        assert not diff_trees(expected, describe_image(img))


@pytest.mark.parametrize("count", [2, 130])
@pytest.mark.parametrize("fsck", FSCK_TOOLS)
def test_fsck_decodes_every_file_of_the_fsmeta(chain, count, fsck):
    """erofs-utils keeps extra devices in a fixed table of 256: deeper chains are checked by the kernel alone."""
    _, fsmeta, devices, _ = chain(count)
    proc = subprocess.run([fsck, *(f"--device={dev}" for dev in devices), "--extract", fsmeta],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_fsmeta_is_the_same_bytes_when_built_again(chain, tmp_path):
    layers, fsmeta, _, _ = chain(60)
    again = tmp_path / "again.erofs"
    build_fsmeta(stack_of(layers), again)
    assert again.read_bytes() == Path(fsmeta).read_bytes()


def test_chunks_of_chunk_based_layers_are_referenced_where_they_are(tmp_path):
    """Files mkfs.erofs stored chunk by chunk (repeated chunks once), in the image or in a blob: the fsmeta
    refers to each chunk where it is, and a layer whose data is in a blob has the blob as its device."""
    tree = tmp_path / "tree"
    tree.mkdir()
    pattern = random.Random(5).randbytes(4096)
    (tree / "repeats").write_bytes(pattern * 3 + bytes(8192) + pattern + b"tail")
    (tree / "other").write_bytes(random.Random(6).randbytes(9000))
    blob = str(tmp_path / "l2.blob")
    open(blob, "wb").close()  # mkfs.erofs 1.8 writes the blob only into a file that exists
    layers = []
    for i, options in enumerate([MKFS_OPTIONS, CHUNKED_OPTIONS, (*CHUNKED_OPTIONS, f"--blobdev={blob}")]):
        layers.append(str(tmp_path / f"l{i}.erofs"))
        (tree / "other").write_bytes(random.Random(i).randbytes(9000 + i))
        subprocess.run([MKFS, "--quiet", *options, layers[-1], str(tree)], check=True, capture_output=True)
    chain = StackFile((StackLayer(layers[0]), StackLayer(layers[1]), StackLayer(layers[2], (blob,))))
    fsmeta = str(tmp_path / "fsmeta.erofs")
    built = build_fsmeta(chain, fsmeta)
    assert built.devices == [layers[0], layers[1], blob]
    assert not diff_trees(*overlay_and_fsmeta(chain, fsmeta, built.devices), sorted_entries=True)


@pytest.mark.parametrize("options, reason", [((), "inline"), (("-zlz4hc",), "compressed")])
def test_a_layer_it_cannot_refer_to_is_refused_by_name(tmp_path, options, reason):
    trees = [tmp_path / "below", tmp_path / "above"]
    for tree in trees:
        (tree / "dir").mkdir(parents=True)
    (trees[0] / "dir" / "plain").write_bytes(b"x" * 5000)
    (trees[1] / "dir" / "tail").write_bytes(b"compressible text " * 300)
    layers = [str(tmp_path / "below.erofs"), str(tmp_path / "above.erofs")]
    for tree, image, opts in zip(trees, layers, [MKFS_OPTIONS, options], strict=True):
        subprocess.run([MKFS, "--quiet", *opts, image, str(tree)], check=True, capture_output=True)
    fsmeta = tmp_path / "fsmeta.erofs"
    with pytest.raises(NotFlattenable) as caught:
        build_fsmeta(stack_of(layers), fsmeta)
    assert (caught.value.layer, caught.value.path) == (1, b"/dir/tail")
    assert reason in str(caught.value) and "/dir/tail" in str(caught.value)
    assert not fsmeta.exists()


def test_build_time_of_a_chain_of_many_files(tmp_path):
    """Flattening reads the layers and writes the merged tree at least at 10,000 files a second."""
    trees = [tmp_path / f"t{i}" for i in range(4)]
    files = 0
    for i, tree in enumerate(trees):
        for d in range(50):
            sub = tree / f"dir{d}"
            sub.mkdir(parents=True)
            for f in range(50):
                (sub / f"file{i}-{f}").write_bytes(b"x" * (f * 97 % 9000))
                files += 1
    layers = []
    for i, tree in enumerate(trees):
        layers.append(str(tmp_path / f"l{i}.erofs"))
        subprocess.run([MKFS, "--quiet", *MKFS_OPTIONS, layers[-1], str(tree)], check=True, capture_output=True)
    started = time.process_time()
    built = build_fsmeta(stack_of(layers), tmp_path / "fsmeta.erofs")
    spent = time.process_time() - started
    assert built.inodes == files + 1 + 50
    assert spent <= files / 10_000, f"{spent:.2f} s CPU for {files} files"


# -- the writer on its own --------------------------------------------------------------------------
def spec_of(path: str, seen: dict[tuple[int, int], InodeSpec]) -> InodeSpec:
    """An ``InodeSpec`` of the tree at ``path`` as ``lstat`` shows it, file contents stored in the image."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) in seen:
        return seen[(st.st_dev, st.st_ino)]
    names = os.listxattr(path, follow_symlinks=False)
    spec = InodeSpec(mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns,
                     nlink=None if stat.S_ISDIR(st.st_mode) else st.st_nlink,
                     xattrs=[(os.fsencode(n), os.getxattr(path, n, follow_symlinks=False)) for n in names],
                     rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)))
    seen[(st.st_dev, st.st_ino)] = spec
    if stat.S_ISDIR(st.st_mode):
        for name in os.listdir(path):
            spec.children[os.fsencode(name)] = spec_of(os.path.join(path, name), seen)
    elif stat.S_ISLNK(st.st_mode):
        spec.data = os.fsencode(os.readlink(path))
    elif stat.S_ISREG(st.st_mode):
        spec.data = Path(path).read_bytes()
    return spec


def test_written_image_shows_the_tree_it_was_made_from(tmp_path):
    """Data stored in the image (inline tails and blocks), a directory of many blocks, long symlinks, extended
    inodes, shared and inline xattrs: the kernel's mount shows the source tree, and so do the library and fsck."""
    src = tmp_path / "src"
    generator = ChainGenerator(7)
    generator.layer(src, 0, 60)
    big = src / "big directory"
    big.mkdir()
    for i in range(300):
        (big / (f"{i:04d}-" + "n" * (i % 250))).write_bytes(b"%d" % i)
    os.symlink("t" * 4095, src / "longest symlink")
    (src / "blocks and a tail").write_bytes(random.Random(2).randbytes(3 * 4096 + 4000))
    (src / "whole blocks").write_bytes(random.Random(3).randbytes(2 * 4096))
    image = tmp_path / "image.erofs"
    with open(image, "wb") as f:
        write_image(spec_of(str(src), {}), f)
    with erofs_mount(str(image)) as mnt:
        actual = describe_path(mnt)
    with ErofsImage(str(image)) as img:
        assert not diff_trees(actual, describe_image(img))
    expected = without_directory_sizes(describe_path(str(src)))
    for entry in [*expected.values(), *actual.values()]:
        entry["blocks"] = None  # ext4 allocates differently
    assert not diff_trees(expected, without_directory_sizes(actual), sorted_entries=True)
    for fsck in FSCK_TOOLS:
        proc = subprocess.run([fsck, "--extract", str(image)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_chunk_references_and_holes_read_from_the_devices(tmp_path):
    """Chunks of different sizes on two devices, holes between them: the kernel reads what the devices hold."""
    devices = [tmp_path / "dev1", tmp_path / "dev2"]
    contents = [random.Random(i).randbytes(16 * 4096) for i in range(2)]
    for path, data in zip(devices, contents, strict=True):
        path.write_bytes(data)
    root = InodeSpec(mode=stat.S_IFDIR | 0o755)
    layouts = {  # name: (size, chunk bits, references)
        b"spread": (5 * 4096 + 7, 12, [ChunkRef(2, 3), None, ChunkRef(1, 0), ChunkRef(1, 15), None, ChunkRef(2, 9)]),
        b"big chunks": (20000, 13, [ChunkRef(1, 2), None, ChunkRef(2, 12)]),
        b"one chunk": (9 * 4096, 16, [ChunkRef(2, 4)]),
        b"all hole": (1 << 20, 20, [None]),
    }
    expected = {}
    for name, (size, bits, refs) in layouts.items():
        root.children[name] = InodeSpec(mode=stat.S_IFREG | 0o644, data=Chunks(size, bits, refs))
        parts = [bytes(1 << bits) if ref is None else contents[ref.device - 1][ref.block * 4096:][: 1 << bits]
                 for ref in refs]
        expected[name] = b"".join(parts)[:size]
    image = tmp_path / "image.erofs"
    with open(image, "wb") as f:
        write_image(root, f, devices=[Device(16), Device(16)])
    with erofs_mount(str(image), [str(p) for p in devices]) as mnt:
        for name, data in expected.items():
            assert (Path(mnt) / os.fsdecode(name)).read_bytes() == data, name
    with ErofsImage(str(image), [str(p) for p in devices]) as img:
        for name, data in expected.items():
            assert img.read(img.resolve(name), 0, len(data) + 1) == data, name


@pytest.mark.parametrize("spec, complaint", [
    (InodeSpec(mode=stat.S_IFDIR | 0o755, children={b"a/b": InodeSpec(mode=stat.S_IFREG)}), "file name"),
    (InodeSpec(mode=stat.S_IFDIR | 0o755, children={b"x" * 256: InodeSpec(mode=stat.S_IFREG)}), "file name"),
    (InodeSpec(mode=stat.S_IFDIR | 0o755, xattrs=[(b"os2.name", b"")]), "namespace"),
    (InodeSpec(mode=stat.S_IFDIR | 0o755, children={b"f": InodeSpec(
        mode=stat.S_IFREG, data=Chunks(10000, 12, [ChunkRef(1, 0)]))}), "chunk references"),
    (InodeSpec(mode=stat.S_IFREG), "root"),
])
def test_what_the_format_cannot_hold_is_refused(spec, complaint):
    with pytest.raises(UnwritableTree, match=complaint):
        write_image(spec, io.BytesIO(), devices=[Device(1)])
