"""Trees without xattrs: the server finds out, says so to the kernel once, and getxattr is asked no more.

The kernel's own mount of the same image is the oracle. What a reader sees differs in one way only, once
the kernel was told: getxattr(2) of a name that is not there fails with EOPNOTSUPP where the kernel's
EROFS mount says ENODATA (the POSIX ACL names give ENODATA on both: the kernel answers those itself), so
``getfattr -n NAME`` prints "Operation not supported" instead of "No such attribute". listxattr(2) lists
nothing on both, and ``getfattr -d -m -`` prints nothing on both.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from erofsfuse.erofs import ondisk as d
from erofsfuse.erofs.errors import CorruptImage
from erofsfuse.erofs.image import ErofsImage
from erofsfuse.erofs.xattrscan import SearchLimit, XattrSearch
from erofsfuse.fuse.stack import StackTree
from erofsfuse.fuse.stackfile import StackFile, StackLayer

from . import corpus
from .damage import find_dirent, rewrite_dirent
from .fusemount import fuse_mount, traced_mount
from .kernel import erofs_mount, overlay_mount
from .trees import describe_path, diff_trees

DEEP_FILE = "usr/share/doc/pkg/examples/deep.conf"
PATHS = ["", "usr", "usr/bin/tool", "usr/bin/link", "usr/share/doc/pkg", DEEP_FILE, "etc/empty"]
# getxattr names asked of each path: absent ones, and those `ls -l` and overlayfs ask
ASKED = ["user.absent", "security.selinux", "trusted.overlay.opaque", "system.posix_acl_access"]
NOT_SUPPORTED, NO_DATA = errno.errorcode[errno.EOPNOTSUPP], errno.errorcode[errno.ENODATA]
SETTLED = "no inode has an xattr"
STORED = "xattrs answered as stored"


# -- images -------------------------------------------------------------------------------------
def make_tree(root: Path) -> Path:
    for directory in ("usr/bin", "usr/share/doc/pkg/examples", "etc/empty", "var/lib"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "usr/bin/tool").write_bytes(b"\x7fELF" + bytes(5000))
    (root / "usr/bin/link").symlink_to("tool")
    (root / DEEP_FILE).write_text("deep\n")
    for i in range(40):
        (root / f"var/lib/file{i:02}").write_text(f"{i}\n")
    return root


def mkfs(src: Path, image: Path, *, xattrs: bool) -> str:
    """An image of ``src``; without ``xattrs`` mkfs.erofs stores none, whatever the source has."""
    subprocess.run(["mkfs.erofs", *([] if xattrs else ["-x", "-1"]), str(image), str(src)], check=True,
                   capture_output=True)
    return str(image)


@pytest.fixture
def bare_image(tmp_path) -> str:
    return mkfs(make_tree(tmp_path / "src"), tmp_path / "bare.erofs", xattrs=False)


@pytest.fixture
def deep_image(tmp_path) -> str:
    """An image whose only xattr is on one file five directories down."""
    src = make_tree(tmp_path / "deep-src")
    os.setxattr(src / DEEP_FILE, "user.deep", b"value")
    return mkfs(src, tmp_path / "deep.erofs", xattrs=True)


def paths_in(image: str) -> int:
    """Every path of the image, the root included: what the search looks at when it finds nothing."""
    with ErofsImage(image) as img:
        return sum(1 for _ in img.walk())


def write_stack(tmp_path: Path, layers: list[tuple[str, bool | None]]) -> str:
    """A stack file of ``(image, xattrs)`` layers, bottom first, written by the project's own writer."""
    path = tmp_path / "stack.json"
    path.write_text(json.dumps(StackFile(tuple(StackLayer(img, xattrs=x) for img, x in layers)).to_document()))
    return str(path)


# -- what a reader sees ---------------------------------------------------------------------------
def outcome(call: Callable[..., object], *args) -> object:
    """What ``call(*args)`` returns, or the name of the errno it fails with (symlinks are not followed)."""
    try:
        return call(*args, follow_symlinks=False)
    except OSError as exc:
        return errno.errorcode[exc.errno]


def xattr_view(root: str, paths=PATHS) -> dict[str, dict[str, object]]:
    """listxattr and the ASKED getxattrs of each path: results or errno names."""
    view = {}
    for rel in paths:
        path = os.path.join(root, rel)
        listed = outcome(os.listxattr, path)
        answers: dict[str, object] = {"list": sorted(listed) if isinstance(listed, list) else listed}
        for name in ASKED:
            answers[name] = outcome(os.getxattr, path, name)
        view[rel] = answers
    return view


def told_view(kernel: dict[str, dict[str, object]], root: str) -> dict[str, dict[str, object]]:
    """What the tree at ``root`` shows once the kernel was told it has no xattrs, given the kernel mount's view:
    EOPNOTSUPP for every getxattr the server would have been asked. The VFS answers some itself: the POSIX
    ACL names (the kernel's ACL code) and ``user.*`` of what is neither a file nor a directory."""
    told = {}
    for rel, answers in kernel.items():
        mode = os.lstat(os.path.join(root, rel)).st_mode
        asked = [n for n in answers if n.startswith(("security.", "trusted."))
                 or (n.startswith("user.") and (stat.S_ISREG(mode) or stat.S_ISDIR(mode)))]
        told[rel] = {n: NOT_SUPPORTED if n in asked and v == NO_DATA else v for n, v in answers.items()}
    return told


def getfattr_dump(root: str) -> tuple[int, str]:
    done = subprocess.run(["getfattr", "-R", "-d", "-m", "-", "."], cwd=root, capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def wait_for(log: Path, needle: str, timeout: float = 60.0) -> str:
    """The log once it holds ``needle``."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if needle in text:
            return text
        assert time.monotonic() < deadline, f"{needle!r} not logged:\n{text}"
        time.sleep(0.05)


def requests(log: Path, op: str) -> int:
    """How many ``op`` requests the daemon answered (its --debug log names each)."""
    return len(re.findall(rf"DEBUG {op}\(", log.read_text(errors="replace")))


@contextlib.contextmanager
def logged_mount(image: str, log: Path, options=()):
    with fuse_mount(image, options=[f"log={log}", *options]) as mnt:
        yield mnt


# -- the library search ---------------------------------------------------------------------------
def shown_by_manifest(name: str, shown: Callable[[bytes], bool]) -> bool:
    entries = corpus.manifest(name)["entries"].values()
    return any(shown(key.encode()) for e in entries for key in e["xattrs"])


@pytest.mark.parametrize("name", corpus.image_names())
def test_search_agrees_with_the_kernel_manifests(name):
    """Found or not as the kernel's listing says, for a single image and for the stack's rule; and every
    path the kernel listed is looked at when nothing is found."""
    with ErofsImage(corpus.image_path(name), corpus.device_paths(name)) as img:
        stack_rule = StackTree([img]).shows_xattr
        for shown in (lambda name: True, stack_rule):
            search = XattrSearch(img, shown)
            found = search.run()
            assert (found is not None) == shown_by_manifest(name, shown)
            if found is not None:
                assert any(shown(n) for n, _ in img.xattrs(img.inode(found)))
        nothing = XattrSearch(img, lambda name: False)
        assert nothing.run() is None
        assert nothing.inodes == len(corpus.manifest(name)["entries"])


def test_layers_with_only_overlay_markers_show_no_xattrs():
    """layer2's xattrs are all overlayfs' own (opaque markers, origins): shown as an image, hidden in a stack."""
    with ErofsImage(corpus.image_path("layer2")) as img:
        stack_rule = StackTree([img]).shows_xattr
        assert not shown_by_manifest("layer2", stack_rule) and shown_by_manifest("layer2", bool)
        assert XattrSearch(img, stack_rule).run() is None
        assert XattrSearch(img).run() is not None


def test_deep_xattr_is_found(deep_image, bare_image):
    with ErofsImage(deep_image) as img:
        search = XattrSearch(img)
        assert search.run() == img.resolve(DEEP_FILE).nid
    with ErofsImage(bare_image) as img:
        search = XattrSearch(img)
        assert search.run() is None
    assert search.inodes == paths_in(bare_image)


def test_search_steps_yield_between_batches(bare_image):
    with ErofsImage(bare_image) as img:
        search = XattrSearch(img)
        search.BATCH = 8
        progress = list(search.steps())
    assert progress == sorted(progress) and len(progress) >= search.inodes // 8 - 1


def test_search_gives_up_past_its_limits(bare_image):
    with ErofsImage(bare_image) as img:
        with pytest.raises(SearchLimit, match="more than 20 inodes"):
            XattrSearch(img, max_inodes=20).run()
        with pytest.raises(SearchLimit, match="more than 3 directories"):
            XattrSearch(img, max_directories=3).run()


def make_loop(image: str) -> int:
    """Point a directory's subdirectory entry back at the directory itself; returns the directory's nid."""
    with ErofsImage(image) as img:
        _, dir_ino, entries, i = find_dirent(
            img, lambda img, es, i: es[i].file_type == d.FT_DIR and es[i].name not in (b".", b".."))
        rewrite_dirent(image, img, dir_ino, entries[i], nid=dir_ino.nid)
    return dir_ino.nid


def test_directory_loop_ends_the_search(bare_image):
    nid = make_loop(bare_image)
    with ErofsImage(bare_image) as img, pytest.raises(CorruptImage, match="directory reached twice") as caught:
        XattrSearch(img).run()
    assert caught.value.nid == nid


# -- served through FUSE ---------------------------------------------------------------------------
def test_no_xattrs_the_kernel_is_told_once(bare_image, tmp_path):
    """After the search, the first getxattr is answered ENOSYS and the kernel sends no other; listxattr
    keeps being answered (an empty list, as on the kernel's mount)."""
    with erofs_mount(bare_image) as kmnt:
        kernel, kernel_dump, kernel_tree = xattr_view(kmnt), getfattr_dump(kmnt), describe_path(kmnt)
    assert all(answers["list"] == [] for answers in kernel.values())
    assert kernel_dump == (0, "")
    log = tmp_path / "debug.log"
    with traced_mount(bare_image, str(log)) as mnt:
        text = wait_for(log, SETTLED)
        assert f"{SETTLED}, scanned {paths_in(bare_image)} inodes" in text
        before = requests(log, "getxattr")
        assert outcome(os.getxattr, os.path.join(mnt, "usr/bin/tool"), "user.absent") == NOT_SUPPORTED
        assert requests(log, "getxattr") == before + 1  # answered ENOSYS
        assert outcome(os.getxattr, os.path.join(mnt, DEEP_FILE), "security.selinux") == NOT_SUPPORTED
        assert requests(log, "getxattr") == before + 1  # never sent
        listed = requests(log, "listxattr")
        assert os.listxattr(os.path.join(mnt, "usr")) == [] and os.listxattr(os.path.join(mnt, "etc")) == []
        assert requests(log, "listxattr") == listed + 2
        assert xattr_view(mnt) == told_view(kernel, mnt)
        assert getfattr_dump(mnt) == kernel_dump
        assert not diff_trees(kernel_tree, describe_path(mnt))


def test_a_deep_xattr_keeps_exact_answers(deep_image, tmp_path):
    log = tmp_path / "mount.log"
    with erofs_mount(deep_image) as kmnt:
        kernel, kernel_tree = xattr_view(kmnt), describe_path(kmnt)
    with ErofsImage(deep_image) as img:
        nid = img.resolve(DEEP_FILE).nid
    with logged_mount(deep_image, log) as mnt:
        text = wait_for(log, STORED)
        assert f"nid {nid} of {deep_image} has xattrs" in text and SETTLED not in text
        assert xattr_view(mnt) == kernel
        assert not diff_trees(kernel_tree, describe_path(mnt))
    assert kernel[DEEP_FILE]["list"] == ["user.deep"]


def test_xattrs_on_answers_exactly_without_a_search(bare_image, tmp_path):
    log = tmp_path / "mount.log"
    with erofs_mount(bare_image) as kmnt:
        kernel = xattr_view(kmnt)
    with logged_mount(bare_image, log, ["xattrs=on"]) as mnt:
        wait_for(log, "xattrs answered as stored (-o xattrs=on)")
        assert xattr_view(mnt) == kernel
    assert SETTLED not in log.read_text()


def test_xattrs_off_hides_even_existing_ones(deep_image, tmp_path):
    log = tmp_path / "mount.log"
    with logged_mount(deep_image, log, ["xattrs=off"]) as mnt:
        wait_for(log, "xattrs hidden (-o xattrs=off)")
        deep = os.path.join(mnt, DEEP_FILE)
        assert outcome(os.getxattr, deep, "user.deep") == NOT_SUPPORTED
        assert outcome(os.listxattr, deep) == NOT_SUPPORTED
        assert outcome(os.getxattr, deep, "system.posix_acl_access") == NO_DATA


def test_bad_option_value_is_refused(bare_image, tmp_path):
    with pytest.raises(subprocess.CalledProcessError) as failed, fuse_mount(bare_image, options=["xattrs=maybe"]):
        pass
    assert b"option xattrs needs auto, on or off, not 'maybe'" in failed.value.stderr


def test_directory_loop_keeps_exact_answers(bare_image, tmp_path):
    """The search gives up on a corrupt image, says why, and every getxattr still reaches the server."""
    nid = make_loop(bare_image)
    log = tmp_path / "debug.log"
    with traced_mount(bare_image, str(log)) as mnt:
        text = wait_for(log, STORED)
        assert re.search(rf"WARNING the search for xattrs in {re.escape(bare_image)} gave up after \d+ inodes: "
                         rf"directory reached twice.*\(nid {nid}\)", text), text
        before = requests(log, "getxattr")
        for rel in ("usr/bin/tool", DEEP_FILE):
            assert outcome(os.getxattr, os.path.join(mnt, rel), "user.absent") == NO_DATA
        assert requests(log, "getxattr") == before + 2


# -- stacks ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def kernel_overlay(images: list[str]):
    with contextlib.ExitStack() as stack:
        lowers = [stack.enter_context(erofs_mount(img)) for img in images]
        yield stack.enter_context(overlay_mount(lowers))


@pytest.mark.parametrize("hints", [[None, None], [False, False], [False, None]])
def test_stack_of_layers_showing_no_xattrs(bare_image, tmp_path, hints):
    """layer2's overlay markers are applied and hidden: the merged tree shows no xattr. Layers the stack
    file says have none are not searched."""
    images = [bare_image, corpus.image_path("layer2")]
    with kernel_overlay(images) as kmnt:
        kernel, kernel_tree = xattr_view(kmnt, ["", "usr", "usr/bin/tool"]), describe_path(kmnt)
    log = tmp_path / "mount.log"
    with logged_mount(write_stack(tmp_path, list(zip(images, hints, strict=True))), log) as mnt:
        text = wait_for(log, SETTLED)
        searched = sum(paths_in(img) for img, hint in zip(images, hints, strict=True) if hint is None)
        assert f"{SETTLED}, scanned {searched} inodes" in text
        assert xattr_view(mnt, ["", "usr", "usr/bin/tool"]) == told_view(kernel, mnt)
        assert not diff_trees(kernel_tree, describe_path(mnt))


@pytest.mark.parametrize("hints", [[None, None], [False, True]])
def test_stack_with_a_visible_xattr_keeps_exact_answers(bare_image, tmp_path, hints):
    """layer1 has user.layer on /opt/xattr: found by the search, or said by the stack file."""
    images = [bare_image, corpus.image_path("layer1")]
    paths = ["", "usr", "opt/xattr"]
    with kernel_overlay(images) as kmnt:
        kernel = xattr_view(kmnt, paths)
    assert kernel["opt/xattr"]["list"] == ["user.layer"]  # trusted.overlay.custom is overlayfs' own
    log = tmp_path / "mount.log"
    with logged_mount(write_stack(tmp_path, list(zip(images, hints, strict=True))), log) as mnt:
        text = wait_for(log, STORED)
        with ErofsImage(images[1]) as img:
            found = f"nid {img.resolve('opt/xattr').nid} of layer 1 ({images[1]}) has xattrs"
        assert (found if hints[1] is None else f"layer 1 ({images[1]}) has xattrs, says the stack file") in text
        assert xattr_view(mnt, paths) == kernel
