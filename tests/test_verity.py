"""dm-verity trees and fs-verity digests against veritysetup and fsverity, and reads checked through a tree.

veritysetup (cryptsetup-bin) computes its trees in userspace and fsverity
(fsverity) its digests, so both answer on a kernel without device-mapper or
fs-verity. The reads through a tree are checked against trees veritysetup
wrote, and every tampering a test makes is confirmed by ``veritysetup verify``.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from erofsfuse.erofs.errors import DeviceError, IntegrityError
from erofsfuse.erofs.verity import VerifiedFile, VerityParams

from . import corpus
from .cli import assert_one_error_line, run_tool
from .damage import patch, read_at

pytestmark = pytest.mark.skipif(not (shutil.which("veritysetup") and shutil.which("fsverity")),
                                reason="needs veritysetup (cryptsetup-bin) and fsverity (fsverity)")

SALT = "5a17" * 16
UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
# images of every size class, and a file that is not an EROFS image at all
FILES = {
    "plain": corpus.image_path("plain"),
    "lz4hc-C1M-big": corpus.image_path("lz4hc-C1M-big"),
    "plain-b512": corpus.image_path("plain-b512"),  # not a whole number of 4 KiB blocks
    "tar": str(corpus.CORPUS / "tar-index.tar"),
}
OPTION_SETS = {
    "defaults": [],
    "no-superblock": ["--no-superblock"],
    "sha1-type0": ["--hash=sha1", "--format=0"],
    "sha1-type1": ["--hash=sha1"],  # 20-byte digests padded to 32
    "sha384-type0": ["--hash=sha384", "--format=0"],
    "sha512": ["--hash=sha512"],
    "sha3-256": ["--hash=sha3-256"],
    "512-byte-blocks": ["--data-block-size=512", "--hash-block-size=512"],  # three levels
    "mixed-blocks": ["--data-block-size=8192", "--hash-block-size=1024"],
    "no-salt": ["--salt=-"],
    "long-salt": ["--salt=" + "c3" * 256],
    "hash-offset": ["--hash-offset=4096"],
    "hash-offset-no-superblock": ["--hash-offset=8192", "--no-superblock", "--hash=sha512"],
    "data-blocks": ["--data-blocks=100"],
}


def with_defaults(options: list[str]) -> list[str]:
    """The options plus a fixed salt and UUID where they are not given, so that two runs can be compared."""
    extra = [] if any(o.startswith("--salt") for o in options) else ["--salt=" + SALT]
    if "--no-superblock" not in options:
        extra.append("--uuid=" + UUID)
    return [*options, *extra]


def fields(text: str) -> dict[str, str]:
    """``Key: value`` lines (veritysetup's report, and erofstool's) as a mapping."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def veritysetup(action: str, *args: str | os.PathLike, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["veritysetup", action, *map(os.fspath, args)], capture_output=True, text=True,
                          check=check)


def erofstool_format(*args: str | os.PathLike) -> dict[str, str]:
    proc = run_tool("verity", "format", *args)
    assert proc.returncode == 0, proc.stderr
    return fields(proc.stdout.decode())


def assert_same_report(ours: dict[str, str], theirs: dict[str, str]) -> None:
    """Every field veritysetup prints is printed the same (its UUID line is empty without a superblock)."""
    for key, value in theirs.items():
        if key != "VERITY header information for":
            assert ours.get(key, "") == value, (key, ours.get(key), value)


# -- writing trees ----------------------------------------------------------------
# every option set on one image, and every file with the defaults
TREE_CASES = [pytest.param("lz4hc-C1M-big", options, id=f"lz4hc-C1M-big-{key}") for key, options in OPTION_SETS.items()]
TREE_CASES += [pytest.param(name, [], id=f"{name}-defaults") for name in FILES if name != "lz4hc-C1M-big"]


@pytest.mark.parametrize(("name", "options"), TREE_CASES)
def test_tree_identical_to_veritysetup(name, options, tmp_path):
    options = with_defaults(options)
    theirs = fields(veritysetup("format", FILES[name], tmp_path / "theirs", *options).stdout)
    ours = erofstool_format(FILES[name], tmp_path / "ours", *options)
    assert_same_report(ours, theirs)
    assert (tmp_path / "ours").read_bytes() == (tmp_path / "theirs").read_bytes()


@pytest.mark.parametrize("options", [[], ["--no-superblock"], ["--data-block-size=512", "--hash-block-size=1024"]],
                         ids=["superblock", "no-superblock", "small-blocks"])
@pytest.mark.parametrize("name", ["plain", "lz4hc-C1M-big", "plain-b512"])
def test_appended_tree_identical_to_veritysetup(name, options, tmp_path):
    """``veritysetup format IMG IMG --hash-offset=N``: the whole file comes out the same."""
    options = with_defaults(options)
    theirs, ours = tmp_path / "theirs.img", tmp_path / "ours.img"
    shutil.copyfile(FILES[name], theirs)
    shutil.copyfile(FILES[name], ours)
    offset = f"--hash-offset={-(-theirs.stat().st_size // 512) * 512}"
    their_report = fields(veritysetup("format", theirs, theirs, offset, *options).stdout)
    assert_same_report(erofstool_format(ours, offset, *options), their_report)
    assert ours.read_bytes() == theirs.read_bytes()


def test_appended_tree_goes_to_the_next_block_by_default(tmp_path):
    """Without --hash-offset the tree is appended at the image's end (rounded to a hash block), as reported."""
    theirs, ours = tmp_path / "theirs.img", tmp_path / "ours.img"
    shutil.copyfile(FILES["plain-b512"], theirs)
    shutil.copyfile(FILES["plain-b512"], ours)
    report = erofstool_format(ours, *with_defaults([]))
    assert int(report["Hash offset"]) == -(-theirs.stat().st_size // 4096) * 4096
    veritysetup("format", theirs, theirs, "--hash-offset=" + report["Hash offset"], *with_defaults([]))
    assert ours.read_bytes() == theirs.read_bytes()


def test_uncovered_tail_is_reported(tmp_path):
    """A file that is not a whole number of data blocks: its tail is left out, as veritysetup does, and said so."""
    theirs = fields(veritysetup("format", FILES["plain-b512"], tmp_path / "theirs", *with_defaults([])).stdout)
    proc = run_tool("verity", "format", FILES["plain-b512"], tmp_path / "ours", *with_defaults([]))
    assert proc.returncode == 0, proc.stderr
    assert fields(proc.stdout.decode())["Data blocks"] == theirs["Data blocks"]
    uncovered = os.path.getsize(FILES["plain-b512"]) - int(theirs["Data blocks"]) * 4096
    assert f"the last {uncovered} bytes" in proc.stderr


def test_single_block_file(tmp_path):
    """One data block: no hash level at all, the block's own digest is the root."""
    data = tmp_path / "one"
    data.write_bytes(read_at(FILES["plain"], 0, 4096))
    theirs = fields(veritysetup("format", data, tmp_path / "theirs", *with_defaults([])).stdout)
    ours = erofstool_format(data, tmp_path / "ours", *with_defaults([]))
    assert_same_report(ours, theirs)
    assert (tmp_path / "ours").read_bytes() == (tmp_path / "theirs").read_bytes()
    checked = VerifiedFile(str(data), bytes.fromhex(theirs["Root hash"]), hash_path=str(tmp_path / "theirs"))
    assert checked.pread(0, 4096) == data.read_bytes()
    checked.close()
    with pytest.raises(IntegrityError):
        VerifiedFile(str(data), bytes(32), hash_path=str(tmp_path / "theirs"))


def test_refuses_a_hash_offset_inside_the_data(tmp_path):
    image = tmp_path / "image"
    shutil.copyfile(FILES["plain"], image)
    proc = run_tool("verity", "format", image, "--hash-offset=4096")
    assert_one_error_line(proc, image, "hash offset")
    assert image.read_bytes() == Path(FILES["plain"]).read_bytes()


# -- fs-verity digests --------------------------------------------------------------
DIGEST_OPTIONS = {
    "defaults": [],
    "sha512": ["--hash-alg=sha512"],
    "1k-blocks": ["--block-size=1024"],
    "salt": ["--salt=0102"],
    "everything": ["--hash-alg=sha512", "--block-size=65536", "--salt=" + "ab" * 32],
    "compact": ["--compact"],
}


# every option set on a file that ends in a partial block, and every kind of file with the defaults
DIGEST_CASES = [pytest.param("plain-b512", options, id=f"plain-b512-{key}") for key, options in DIGEST_OPTIONS.items()]
DIGEST_CASES += [pytest.param(name, [], id=f"{name}-defaults")
                 for name in ["plain", "lz4hc-C1M-big", "tar", "empty", "100-bytes", "one-block"]]
DIGEST_CASES += [pytest.param(name, DIGEST_OPTIONS["everything"], id=f"{name}-everything")
                 for name in ["empty", "100-bytes", "one-block"]]


@pytest.mark.parametrize(("name", "options"), DIGEST_CASES)
def test_digest_matches_fsverity(name, options, tmp_path):
    if name in FILES:
        path = FILES[name]
    else:
        path = str(tmp_path / name)
        size = {"empty": 0, "100-bytes": 100, "one-block": 4096}[name]
        Path(path).write_bytes(read_at(FILES["plain"], 0, size))
    theirs = subprocess.run(["fsverity", "digest", path, *options], capture_output=True, check=True).stdout
    proc = run_tool("digest", path, *options)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == theirs


# -- reading through a tree ------------------------------------------------------------
class Tree:
    """A file copied to tmp and a tree veritysetup made for it, with the tree's geometry from its report."""

    def __init__(self, tmp_path: Path, name: str, options: list[str], appended: bool = False):
        self.data = str(tmp_path / "data")
        shutil.copyfile(FILES[name], self.data)
        self.options = with_defaults(options)
        self.superblock = "--no-superblock" not in options
        self.offset = -(-os.path.getsize(self.data) // 4096) * 4096 if appended else 0
        self.hash = self.data if appended else str(tmp_path / "hash")
        report = fields(veritysetup("format", self.data, self.hash, f"--hash-offset={self.offset}",
                                    *self.options).stdout)
        self.root = bytes.fromhex(report["Root hash"])
        self.data_block_size = int(report["Data block size"])
        self.hash_block_size = int(report["Hash block size"])
        self.blocks = int(report["Data blocks"])
        self.fanout = self.hash_block_size // 32  # sha256
        sizes, count = [], self.blocks  # blocks per level, level 0 (the data blocks' digests) first
        while count > 1:
            count = -(-count // self.fanout)
            sizes.append(count)
        assert sum(sizes) == int(report["Hash blocks"])
        self.level_sizes = sizes
        tree_end = os.path.getsize(self.hash) if appended else int(report["Hash device size"].split()[0])
        self.tree_start = tree_end // self.hash_block_size - sum(sizes)

    def open(self, root: bytes | None = None, **kwargs) -> VerifiedFile:
        params = None
        if not self.superblock:
            params = VerityParams(hash_name="sha256", data_block_size=self.data_block_size,
                                  hash_block_size=self.hash_block_size, salt=bytes.fromhex(SALT))
        return VerifiedFile(self.data, self.root if root is None else root, hash_path=self.hash,
                            hash_offset=self.offset, params=params, **kwargs)

    def hash_block_position(self, level: int, index: int) -> int:
        """Byte offset of a hash block: the levels are stored top first."""
        return (self.tree_start + sum(self.level_sizes[level + 1:]) + index) * self.hash_block_size

    def covered(self, level: int, index: int) -> range:
        """The data blocks whose check goes through hash block ``index`` of ``level``."""
        span = self.fanout ** (level + 1)
        return range(index * span, min(self.blocks, (index + 1) * span))

    def veritysetup_accepts(self) -> bool:
        proc = veritysetup("verify", self.data, self.hash, self.root.hex(), f"--hash-offset={self.offset}",
                           *self.options, check=False)
        return proc.returncode == 0


LAYOUTS = {
    "separate": ("lz4hc-C1M-big", [], False),
    "no-superblock": ("lz4hc-C1M-big", ["--no-superblock"], False),
    "appended": ("plain", [], True),
    "three-levels": ("lz4hc-C1M-big", ["--data-block-size=512", "--hash-block-size=512"], False),
}


@pytest.fixture(params=LAYOUTS.values(), ids=LAYOUTS.keys())
def tree(request, tmp_path) -> Tree:
    return Tree(tmp_path, *request.param)


def all_blocks_read(checked: VerifiedFile, tree: Tree) -> dict[int, bytes | IntegrityError]:
    """Each data block read on its own: its bytes, or the error its read raised."""
    results: dict[int, bytes | IntegrityError] = {}
    for block in range(tree.blocks):
        try:
            results[block] = checked.pread(block * tree.data_block_size, tree.data_block_size)
        except IntegrityError as exc:
            results[block] = exc
    return results


def assert_only_these_fail(tree: Tree, bad: range | list[int]) -> None:
    """Reads of the ``bad`` data blocks raise EIO-mapped errors naming the file and block; the others are right."""
    plain = Path(tree.data).read_bytes()
    with tree.open() as checked:
        results = all_blocks_read(checked, tree)
    for block, result in results.items():
        if block in bad:
            assert isinstance(result, IntegrityError), block
            assert result.errno == errno.EIO
            assert (result.path, result.block) == (tree.data, block)
            assert f"data block {block} of {tree.data}" in str(result)
        else:
            assert result == plain[block * tree.data_block_size:(block + 1) * tree.data_block_size], block


def test_verified_reads_return_the_file(tree):
    plain = Path(tree.data).read_bytes()
    checked = tree.open()
    assert checked.size == tree.blocks * tree.data_block_size
    rng = random.Random(15)
    for _ in range(400):
        pos = rng.randrange(checked.size)
        length = rng.randrange(min(checked.size - pos, 3 * tree.data_block_size) + 1)
        assert checked.pread(pos, length) == plain[pos:pos + length], (pos, length)
    assert checked.pread(0, checked.size) == plain[:checked.size]
    assert checked.verified_blocks == tree.blocks
    with pytest.raises(Exception, match="past the end"):
        checked.pread(checked.size - 1, 2)
    checked.close()


def test_base_offset(tree):
    """``base`` serves the data from an offset on (an image inside a bigger file), still checked."""
    plain = Path(tree.data).read_bytes()
    base = 3 * tree.data_block_size + 100
    checked = tree.open(base=base)
    assert checked.size == tree.blocks * tree.data_block_size - base
    assert checked.pread(0, 5000) == plain[base:base + 5000]
    assert checked.pread(checked.size - 10, 10) == plain[base + checked.size - 10:base + checked.size]


def test_reads_from_many_threads(tree):
    plain = Path(tree.data).read_bytes()
    checked = tree.open()
    failures = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            pos = rng.randrange(checked.size)
            length = rng.randrange(min(checked.size - pos, 8192) + 1)
            if checked.pread(pos, length) != plain[pos:pos + length]:
                failures.append((pos, length))

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    checked.close()
    assert not failures


def test_verified_blocks_are_not_checked_again(tree):
    """Once read, a block's check is remembered: the tree is not read for it again."""
    checked = tree.open()
    first = checked.pread(0, checked.size)
    leaf = tree.hash_block_position(0, 0)
    patch(tree.hash, leaf, bytes(b ^ 0xFF for b in read_at(tree.hash, leaf, 4)))
    assert checked.pread(0, checked.size) == first
    with pytest.raises(IntegrityError):
        tree.open().pread(0, tree.data_block_size)


def flip(path: str, offset: int) -> None:
    patch(path, offset, bytes([read_at(path, offset, 1)[0] ^ 0x01]))


def test_a_changed_data_byte_fails_only_its_block(tree):
    bad = tree.blocks // 2
    flip(tree.data, bad * tree.data_block_size + 123)
    assert not tree.veritysetup_accepts()
    assert_only_these_fail(tree, [bad])
    with pytest.raises(IntegrityError, match=f"data block {bad} "):
        tree.open().pread(0, (bad + 1) * tree.data_block_size)


@pytest.mark.parametrize("where", ["middle", "last"])
def test_a_changed_hash_block_fails_the_blocks_below_it(tree, where):
    """Each level below the top: the data blocks checked through that hash block fail, the rest read."""
    for level in range(len(tree.level_sizes) - 1):
        index = tree.level_sizes[level] // 2 if where == "middle" else tree.level_sizes[level] - 1
        position = tree.hash_block_position(level, index)
        # the last block of a level ends in zero padding: a changed padding byte counts too
        flip(tree.hash, position + (tree.hash_block_size - 1 if where == "last" else 40))
        assert not tree.veritysetup_accepts()
        assert_only_these_fail(tree, tree.covered(level, index))
        flip(tree.hash, position + (tree.hash_block_size - 1 if where == "last" else 40))
        assert tree.veritysetup_accepts()


def test_a_changed_top_block_fails_the_open(tree):
    flip(tree.hash, tree.hash_block_position(len(tree.level_sizes) - 1, 0) + 7)
    assert not tree.veritysetup_accepts()
    with pytest.raises(IntegrityError, match="root hash does not match") as raised:
        tree.open()
    assert raised.value.errno == errno.EIO


@pytest.mark.parametrize("layout", ["separate", "appended"])
def test_a_changed_superblock_fails_the_open(layout, tmp_path):
    tree = Tree(tmp_path, *LAYOUTS[layout])
    salt_field = tree.offset + 8 + 4 + 4 + 16 + 32 + 4 + 4 + 8 + 2 + 6  # after the fixed fields
    flip(tree.hash, salt_field)
    assert not tree.veritysetup_accepts()
    with pytest.raises(IntegrityError, match="root hash does not match"):
        tree.open()
    flip(tree.hash, salt_field)
    flip(tree.hash, tree.offset)  # the signature
    with pytest.raises(IntegrityError, match="no verity superblock"):
        tree.open()


def test_a_wrong_root_hash_fails_the_open(tree):
    wrong = bytes([tree.root[0] ^ 0x80]) + tree.root[1:]
    with pytest.raises(IntegrityError, match="root hash does not match"):
        tree.open(wrong)
    with pytest.raises(IntegrityError, match="32 bytes"):
        tree.open(tree.root[:20])


def test_a_cut_tree_or_data_fails_the_open(tree, tmp_path):
    with tree.open() as checked:
        params = None if tree.superblock else checked.params
    short = tmp_path / "short"
    shutil.copyfile(tree.data, short)
    os.truncate(short, tree.data_block_size * (tree.blocks - 1))
    with pytest.raises(DeviceError, match="hash tree covers"):
        VerifiedFile(str(short), tree.root, hash_path=tree.hash, hash_offset=tree.offset, params=params)
    os.truncate(tree.hash, os.path.getsize(tree.hash) - tree.hash_block_size)
    with pytest.raises(DeviceError, match="hash tree needs"):
        tree.open()


# -- erofstool verity verify -----------------------------------------------------------
def verify_args(tree: Tree, root: bytes) -> list[str]:
    hash_file = [] if tree.hash == tree.data else [tree.hash]
    options = [o for o in tree.options if not o.startswith("--uuid")]
    return [tree.data, *hash_file, root.hex(), f"--hash-offset={tree.offset}", *options]


def test_tool_verifies_a_good_file(tree):
    proc = run_tool("verity", "verify", *verify_args(tree, tree.root))
    assert proc.returncode == 0, proc.stderr
    assert f"verified, {tree.blocks} data blocks".encode() in proc.stdout


def test_tool_names_the_first_bad_block(tree):
    bad = [tree.blocks // 3, tree.blocks // 2]
    for block in bad:
        flip(tree.data, block * tree.data_block_size + 1)
    proc = run_tool("verity", "verify", *verify_args(tree, tree.root))
    assert_one_error_line(proc, tree.data, f"data block {bad[0]} ")


def test_tool_refuses_a_wrong_root_hash(tree):
    proc = run_tool("verity", "verify", *verify_args(tree, bytes(32)))
    assert_one_error_line(proc, tree.data, "root hash does not match")
