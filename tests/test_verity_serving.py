"""erofsfuse serving images verified against dm-verity trees that veritysetup wrote.

The kernel's mount of the same image (without its tree) is the oracle of what a verified mount shows;
veritysetup (cryptsetup-bin, userspace here) is the oracle of the root hashes. Each tampering is a byte
flipped in the data, the metadata, the tree or an extra device, and only what uses that block may fail.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from erofsfuse.erofs.data import Placement
from erofsfuse.erofs.image import ErofsImage
from erofsfuse.erofs.verity import VerifiedFile, VeritySpec
from erofsfuse.fuse.source import open_tree
from erofsfuse.fuse.stackfile import StackFile, StackFileError, StackLayer

from . import corpus
from .cli import run_tool
from .damage import patch, read_at
from .fusemount import erofsfuse_command, fuse_mount, is_mounted
from .kernel import erofs_mount, overlay_mount
from .trees import ALL_KEYS, describe_path, diff_trees, sha256_file

pytestmark = pytest.mark.skipif(not (shutil.which("veritysetup") and shutil.which("mkfs.erofs")),
                                reason="needs veritysetup (cryptsetup-bin) and mkfs.erofs")

FILES = 64
FILE_BYTES = 16 << 10  # 4 blocks each: the image has more than 128 blocks, so its tree has two levels


def veritysetup_format(data: str | Path, hash_file: str | Path | None = None) -> str:
    """Format a tree with veritysetup (appended to ``data`` when ``hash_file`` is None); the root hash."""
    args = [str(data), str(hash_file)] if hash_file else \
        [f"--hash-offset={os.path.getsize(data)}", str(data), str(data)]
    out = subprocess.run(["veritysetup", "format", *args], check=True, capture_output=True, text=True).stdout
    return re.search(r"^Root hash:\s+([0-9a-f]+)$", out, re.MULTILINE).group(1)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """A plain image of files with whole blocks of their own, and a directory of several dirent blocks."""
    top = tmp_path_factory.mktemp("verity-image")
    source = top / "tree"
    (source / "many").mkdir(parents=True)
    for i in range(FILES):
        (source / f"file{i:03}").write_bytes(os.urandom(FILE_BYTES))
    for i in range(300):
        (source / "many" / f"entry-with-a-long-name-{i:04}").write_text(f"{i}\n")
    os.symlink("file000", source / "link")
    built = top / "plain.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", "-Enoinline_data", str(built), str(source)], check=True)
    return built


@pytest.fixture(scope="module")
def kernel_view(image) -> dict:
    with erofs_mount(str(image)) as mnt:
        return describe_path(mnt)


def verified_copy(image: Path, where: Path, separate: bool = False) -> tuple[Path, str, list[str]]:
    """A copy of ``image`` with its tree (appended, or in ``.verity`` beside it): path, root hash, mount options."""
    copy = where / "verified.erofs"
    shutil.copy(image, copy)
    if separate:
        root = veritysetup_format(copy, where / "verified.verity")
        return copy, root, [f"verity={root}", f"verity_hash={where / 'verified.verity'}"]
    root = veritysetup_format(copy)
    return copy, root, [f"verity={root}"]


def flip(path: Path, offset: int) -> None:
    patch(path, offset, bytes([read_at(str(path), offset, 1)[0] ^ 0x40]))


def file_block(img: ErofsImage, name: str) -> int:
    """Where the data of file ``name`` starts in the image."""
    ext = img.extents(img.resolve(name))[0]
    assert ext.placement is Placement.DEVICE
    return ext.pa


def assert_reads_like(kernel: dict, mnt: str, intact: Callable[[str], bool], listed: bool = True) -> None:
    """Every path ``intact`` takes shows what the kernel shows (the listing too, when ``listed``)."""
    if listed:
        assert diff_trees(kernel, describe_path(mnt, content=False), [k for k in ALL_KEYS if k != "sha256"]) == []
    for path, entry in kernel.items():
        if intact(path) and path != "/":
            assert stat.S_IMODE(os.lstat(mnt + path).st_mode) == entry["mode"], path
            if entry.get("sha256"):
                assert sha256_file(mnt + path) == entry["sha256"], path


def expect_eio(func, *args) -> None:
    with pytest.raises(OSError) as caught:
        func(*args)
    assert caught.value.errno == errno.EIO


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("separate", [False, True], ids=["appended", "separate"])
def test_a_verified_mount_reads_like_the_kernel(image, kernel_view, tmp_path, separate):
    copy, _, options = verified_copy(image, tmp_path, separate)
    with fuse_mount(str(copy), options=options) as mnt:
        assert diff_trees(kernel_view, describe_path(mnt)) == []
        with open("/proc/self/mountinfo") as f:
            assert any(mnt in line for line in f)


def test_the_tree_is_found_where_erofstool_appends_it(image, kernel_view, tmp_path):
    """``erofstool verity format IMAGE`` and ``-o verity=`` alone agree on where an appended tree lies."""
    copy = tmp_path / "tool.erofs"
    shutil.copy(image, copy)
    out = run_tool("verity", "format", copy).stdout.decode()
    root = re.search(r"^Root hash:\s+([0-9a-f]+)$", out, re.MULTILINE).group(1)
    with fuse_mount(str(copy), options=[f"verity={root}"]) as mnt:
        assert diff_trees(kernel_view, describe_path(mnt)) == []


def test_a_changed_data_block_fails_that_file_only(image, kernel_view, tmp_path):
    """The file whose block changed reads EIO (its good blocks still read), every other file as the kernel shows
    it, and the daemon logs one line naming the image, the block and the inode."""
    copy, _, options = verified_copy(image, tmp_path)
    with ErofsImage(str(image)) as img:
        start = file_block(img, "file007")
        nid = img.resolve("file007").nid
        block_size = img.sb.block_size
    bad = start + 2 * block_size  # the file's third block
    flip(copy, bad + 100)
    log = tmp_path / "daemon.log"
    with fuse_mount(str(copy), options=[*options, f"log={log}"]) as mnt:
        expect_eio(read, f"{mnt}/file007")
        expect_eio(read, f"{mnt}/file007")
        with open(f"{mnt}/file007", "rb") as f:
            assert f.read(2 * block_size) == read_at(str(image), start, 2 * block_size)
        assert_reads_like(kernel_view, mnt, lambda path: path != "/file007")
    lines = [line for line in log.read_text().splitlines() if "hash tree" in line]
    assert len(lines) == 1, lines
    assert f"data block {bad // 4096} of {copy}" in lines[0] and f"nid {nid}" in lines[0], lines[0]


def test_a_changed_directory_block_fails_its_lookups_and_listing(image, kernel_view, tmp_path):
    copy, _, options = verified_copy(image, tmp_path)
    with ErofsImage(str(image)) as img:
        directory = img.resolve("many")
        first = min(name for name in img.listdir(directory))
        flip(copy, file_block(img, "many") + 40)
    with fuse_mount(str(copy), options=options) as mnt:
        expect_eio(os.listdir, f"{mnt}/many")
        expect_eio(os.lstat, f"{mnt}/many/{first.decode()}")
        assert_reads_like(kernel_view, mnt, lambda path: not path.startswith("/many/"), listed=False)


def test_a_wrong_root_hash_refuses_the_mount_in_one_line(image, tmp_path):
    copy, root, _ = verified_copy(image, tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    wrong = f"{int(root[0], 16) ^ 1:x}{root[1:]}"
    proc = subprocess.run(erofsfuse_command(str(copy), str(mnt), options=[f"verity={wrong}"]), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "root hash does not match" in proc.stderr and str(copy) in proc.stderr
    assert not is_mounted(str(mnt))


@pytest.mark.parametrize(("option", "needle"), [
    ("verity=xyz", "is not a root hash"),
    ("verity=abc", "is not a root hash"),
    ("verity_hash=/x", "need verity=ROOTHASH"),
    ("device_verity=0:ab", "N:ROOTHASH"),
    ("device_verity=1:zz", "is not a root hash"),
])
def test_a_malformed_verity_option_is_a_usage_error(image, tmp_path, option, needle):
    proc = subprocess.run(erofsfuse_command(str(image), str(tmp_path), options=[option]), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and needle in proc.stderr.splitlines()[-1], proc.stderr


def test_a_root_hash_of_another_algorithm_refuses_the_mount(image, tmp_path):
    copy, root, _ = verified_copy(image, tmp_path)
    proc = subprocess.run(erofsfuse_command(str(copy), str(tmp_path), options=[f"verity={root}00"]),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "32 bytes" in proc.stderr, proc.stderr


def test_a_changed_hash_block_fails_the_blocks_it_covers(image, tmp_path):
    """A changed level-0 hash block fails the data blocks under it alone; a changed top block, the mount."""
    copy, root, options = verified_copy(image, tmp_path)
    with VerifiedFile(str(copy), bytes.fromhex(root), hash_offset=os.path.getsize(image)) as checked:
        layout = checked.layout
        hbs = checked.params.hash_block_size
        covered = 1 << layout.fanout_bits  # data blocks under one level-0 hash block
    assert layout.levels == 2 and layout.level_blocks[0] >= 2
    flip(copy, (layout.level_start[0] + 1) * hbs + 7)  # the hash block of data blocks 128 to 255
    with ErofsImage(str(image)) as img:
        blocks = {f"file{i:03}": file_block(img, f"file{i:03}") // img.sb.block_size for i in range(FILES)}
    with fuse_mount(str(copy), options=options) as mnt:
        for name, block in blocks.items():
            if covered <= block < 2 * covered:
                expect_eio(read, f"{mnt}/{name}")
            elif block + FILE_BYTES // 4096 <= covered:
                assert read(f"{mnt}/{name}") == read(f"{image.parent}/tree/{name}")
    flip(copy, layout.start * hbs + 3)
    proc = subprocess.run(erofsfuse_command(str(copy), str(tmp_path), options=options), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "root hash does not match" in proc.stderr, proc.stderr


def test_a_multi_device_image_with_a_tree_per_device(tmp_path):
    """blobdev: the image's tree appended, the blob's in a file of its own; a changed blob block fails the file
    whose chunk it holds."""
    image, blob = tmp_path / "blobdev.erofs", tmp_path / "blobdev.blob"
    shutil.copy(corpus.image_path("blobdev"), image)
    shutil.copy(corpus.device_paths("blobdev")[0], blob)
    root = veritysetup_format(image)
    blob_root = veritysetup_format(blob, tmp_path / "blob.verity")
    options = [f"verity={root}", f"device_verity=1:{blob_root}:{tmp_path / 'blob.verity'}"]
    with erofs_mount(corpus.image_path("blobdev"), corpus.device_paths("blobdev")) as mnt:
        kernel = describe_path(mnt)
    with fuse_mount(str(image), [str(blob)], options=options) as mnt:
        assert diff_trees(kernel, describe_path(mnt)) == []
    with ErofsImage(corpus.image_path("blobdev"), corpus.device_paths("blobdev")) as img:
        victim, position = next((path, img.devices.locate(ext.pa, ext.device_id)[1])
                                for path, ino in img.walk() if ino.is_reg and ino.size >= 4096
                                for ext in img.extents(ino)[:1]
                                if img.devices.locate(ext.pa, ext.device_id)[0] is not img.devices.primary)
    flip(blob, position + 5)
    with fuse_mount(str(image), [str(blob)], options=options) as mnt:
        expect_eio(read, mnt + victim.decode())
        damaged = kernel[victim.decode()]["sha256"]
        assert_reads_like(kernel, mnt, lambda path: kernel[path].get("sha256") != damaged)
    proc = subprocess.run(erofsfuse_command(str(image), str(tmp_path), [str(blob)],
                                            options=[f"verity={root}", f"device_verity=2:{blob_root}"]),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "device 2" in proc.stderr, proc.stderr


def test_a_stack_with_a_verified_layer(tmp_path):
    """A stack file whose middle layer is verified serves what the kernel's overlay of the layers shows, and a
    changed byte in that layer's tree refuses it."""
    verified = tmp_path / "layer2.erofs"
    shutil.copy(corpus.image_path("layer2"), verified)
    root = veritysetup_format(verified, tmp_path / "layer2.verity")
    layers = [StackLayer(corpus.image_path("layer1")),
              StackLayer("layer2.erofs", verity=VeritySpec(bytes.fromhex(root), "layer2.verity")),
              StackLayer(corpus.image_path("layer3"))]
    stack = tmp_path / "stack.json"
    stack.write_text(json.dumps(StackFile(tuple(layers)).to_document()))
    with erofs_mount(corpus.image_path("layer1")) as l1, erofs_mount(corpus.image_path("layer2")) as l2, \
            erofs_mount(corpus.image_path("layer3")) as l3, overlay_mount([l1, l2, l3]) as overlay:
        kernel = describe_path(overlay)
    with fuse_mount(str(stack)) as mnt:
        assert diff_trees(kernel, describe_path(mnt)) == []
    tree = open_tree(str(stack))
    try:
        assert [type(img.devices.primary).__name__ for img in tree.images()] == \
            ["BackingFile", "VerifiedFile", "BackingFile"]
    finally:
        tree.close()
    flip(tmp_path / "layer2.verity", 4096 + 1)  # the tree's top block, after the superblock's
    proc = subprocess.run(erofsfuse_command(str(stack), str(tmp_path)), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "root hash does not match" in proc.stderr and "layer2" in proc.stderr, \
        proc.stderr


def test_verity_in_a_stack_file_reads_back_as_written(tmp_path):
    spec = VeritySpec(bytes(range(32)), "/h/app.verity", 8192)
    stack = StackFile((StackLayer("/l/base.erofs", verity=VeritySpec(b"\x01" * 32)),
                       StackLayer("/l/app.erofs", ("/l/a.blob", "/l/b.blob"), verity=spec,
                                  device_verity=(None, VeritySpec(b"\x02" * 64, None, 4096))),
                       StackLayer("/l/top.erofs")))
    doc = stack.to_document()
    assert doc["layers"][1]["verity"] == {
        "root_hash": bytes(range(32)).hex(), "hash_file": "/h/app.verity", "hash_offset": 8192,
        "devices": [None, {"root_hash": "02" * 64, "hash_offset": 4096}]}
    (tmp_path / "stack.json").write_text(json.dumps(doc))
    assert StackFile.load(str(tmp_path / "stack.json")) == stack
    relative = StackFile.from_document({"layers": [{"image": "a.erofs", "verity": {
        "root_hash": "ab" * 32, "hash_file": "a.verity"}}]}, "/base")
    assert relative.layers[0].verity == VeritySpec(b"\xab" * 32, "/base/a.verity")


@pytest.mark.parametrize(("verity", "needle"), [
    ('"ab"', '"verity" must be an object'),
    ("{}", '"verity" names no tree'),
    ('{"hash_file": "a.verity"}', '"verity": no "root_hash"'),
    ('{"root_hash": "xyz"}', "is not a root hash"),
    ('{"root_hash": "abcd", "hash_offset": -1}', '"hash_offset" must be a byte count'),
    ('{"root_hash": "abcd", "hash_file": 7}', '"hash_file" must be a path'),
    ('{"devices": [null, {"root_hash": "ab"}]}', "at most 1 trees"),
    ('{"devices": ["ab"]}', "device 1: a tree is an object"),
    ('{"devices": [{"root_hash": "a"}]}', "device 1: 'a' is not a root hash"),
])
def test_a_malformed_verity_key_is_refused_in_one_line(tmp_path, verity, needle):
    path = tmp_path / "stack.json"
    path.write_text(f'{{"layers": [{{"image": "a.erofs", "devices": ["b.blob"], "verity": {verity}}}]}}')
    with pytest.raises(StackFileError) as caught:
        StackFile.load(str(path))
    assert needle in str(caught.value) and "layer 0" in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)
