"""Small files go into the kernel's page cache with their first open (``-o preload=KIB``), so reading them
costs no READ request; what readers see is what the kernel's own mount of the image shows."""

from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
from pathlib import Path

import pytest

from erofsfuse.erofs import ErofsImage

from .fusemount import traced_mount
from .kernel import erofs_mount
from .trees import describe_path, diff_trees

SMALL, LARGE = 40, 3  # files of up to 16 KiB, and of 1 MiB (beyond the preload limit)


@pytest.fixture(scope="module", params=["plain", "lz4hc"])
def image(request, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp(f"preload-{request.param}")
    tree = root / "tree"
    rng = random.Random(11)
    for i in range(SMALL):
        (tree / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        size = rng.randrange(1, 16384)
        data = bytes(rng.choices(b"abcdefgh \n", k=size)) if i % 2 else rng.randbytes(size)
        (tree / f"d{i % 4}" / f"small{i:02d}").write_bytes(data)
    for i in range(LARGE):
        (tree / f"large{i}").write_bytes(rng.randbytes(1 << 20))
    (tree / "empty").write_bytes(b"")
    path = root / "image.erofs"
    flags = ["-zlz4hc"] if request.param == "lz4hc" else []
    subprocess.run(["mkfs.erofs", "--quiet", *flags, str(path), str(tree)], check=True, capture_output=True,
                   timeout=120)
    return str(path)


def requests(log: Path, op: str) -> list[str]:
    return re.findall(rf"DEBUG {op}\((\d+),", log.read_text(errors="replace"))


def contents(root: str) -> dict[str, str]:
    found = {}
    for base, _, files in os.walk(root):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return found


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3")


@pytest.mark.parametrize("preload", [None, "preload=0", "preload=64"])
def test_small_files_are_read_without_read_requests(image, tmp_path, preload):
    with erofs_mount(image) as kmnt:
        kernel_tree, kernel_bytes = describe_path(kmnt), contents(kmnt)
    log = tmp_path / "debug.log"
    with traced_mount(image, str(log), options=[preload] if preload else []) as mnt:
        drop_caches()
        assert contents(mnt) == kernel_bytes
        reads = requests(log, "read")
        opens = requests(log, "open")
        assert not diff_trees(kernel_tree, describe_path(mnt))
        assert contents(mnt) == kernel_bytes  # again, from the page cache: no request reads anything
        assert requests(log, "read") == reads
    files = SMALL + LARGE + 1
    assert len(opens) == files
    if preload == "preload=0":
        assert len(set(reads)) == SMALL + LARGE  # every file with bytes is read
    else:
        assert len(set(reads)) == LARGE  # only the files beyond the limit


def test_the_page_cache_filled_at_open_survives_memory_pressure(image, tmp_path):
    """Pages the kernel took at open may be dropped like any other: the next read asks for them again."""
    log = tmp_path / "debug.log"
    with erofs_mount(image) as kmnt:
        kernel_bytes = contents(kmnt)
    with traced_mount(image, str(log)) as mnt:
        for name in kernel_bytes:
            with open(os.path.join(mnt, name), "rb"):
                pass  # opened: stored, not read
        drop_caches()
        assert contents(mnt) == kernel_bytes
        assert len(set(requests(log, "read"))) == SMALL + LARGE  # dropped, so read as usual


def test_a_corrupt_small_file_opens_and_fails_to_read_as_on_the_kernel(tmp_path):
    """Preloading reads the file at open; a file it cannot decode still opens, and its READ reports it."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "bad").write_bytes(b"compressible text, " * 500)
    (tree / "good").write_bytes(b"other text, " * 300)
    path = tmp_path / "image.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", "-zlz4hc", str(path), str(tree)], check=True, capture_output=True,
                   timeout=120)
    with ErofsImage(str(path)) as img:
        (ext,) = img.extents(img.resolve("/bad"))
    with open(path, "r+b") as f:
        f.seek(ext.pa)
        f.write(b"\xff" * ext.plen)

    def outcome(root: str) -> dict[str, object]:
        seen: dict[str, object] = {}
        for name in ("bad", "good"):
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except OSError as exc:
                seen[name] = ("open fails", exc.errno)
                continue
            try:
                seen[name] = hashlib.sha256(os.read(fd, 1 << 20)).hexdigest()
            except OSError:
                seen[name] = "read fails"
            finally:
                os.close(fd)
        return seen

    with erofs_mount(str(path)) as kmnt:
        kernel = outcome(kmnt)
    assert kernel["bad"] == "read fails"
    with traced_mount(str(path), str(tmp_path / "debug.log")) as mnt:
        assert outcome(mnt) == kernel
