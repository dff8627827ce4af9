"""Filesystem appliers and tree comparison, after containerd's continuity/fs/fstest.

An applier is a function that changes a directory tree; the same applier runs on a plain directory
(the expected result) and on a snapshot mount, and the two trees must then be equal in everything
containerd's comparison looks at: type, mode, owner, size of non-directories, content, link targets,
device numbers, xattrs and hard-link grouping (not times).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.trees import describe_path, diff_trees

Applier = Callable[[Path], None]
COMPARED = ("type", "mode", "uid", "gid", "size", "rdev", "target", "xattrs", "sha256", "ino", "entries")


def _at(root: Path, name: str) -> Path:
    return root / name.lstrip("/")


def apply(*appliers: Applier) -> Applier:
    def run(root: Path) -> None:
        for a in appliers:
            a(root)
    return run


def create_file(name: str, content: bytes, mode: int) -> Applier:
    def run(root: Path) -> None:
        path = _at(root, name)
        path.write_bytes(content)
        os.chmod(path, mode)
    return run


def create_dir(name: str, mode: int) -> Applier:
    def run(root: Path) -> None:
        path = _at(root, name)
        path.mkdir(mode=mode)
        os.chmod(path, mode)
    return run


def remove_all(name: str) -> Applier:
    def run(root: Path) -> None:
        path = _at(root, name)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    return run


def chown(name: str, uid: int, gid: int) -> Applier:
    return lambda root: os.lchown(_at(root, name), uid, gid)


def link(old: str, new: str) -> Applier:
    return lambda root: os.link(_at(root, old), _at(root, new))


def rename(old: str, new: str) -> Applier:
    return lambda root: os.rename(_at(root, old), _at(root, new))


def set_xattr(name: str, attr: str, value: bytes) -> Applier:
    return lambda root: os.setxattr(_at(root, name), attr, value, follow_symlinks=False)


def _comparable(root: Path) -> dict[str, dict]:
    tree = describe_path(str(root))
    for path, entry in tree.items():
        if entry["type"] == "dir":
            entry["size"] = None  # directory sizes are filesystem-specific
        else:
            # Hard links are files sharing (device, inode) with more than one link; an overlay of several
            # layers shows files of different layers with equal inode numbers on different devices.
            st = os.lstat(root / path.lstrip("/"))
            entry["ino"] = (st.st_dev, st.st_ino) if st.st_nlink > 1 else path
    tree["/"].update(mode=None, uid=None, gid=None, xattrs=None)  # the roots are the test's own directories
    return tree


def directory_differences(expected: Path, actual: Path) -> list[str]:
    return diff_trees(_comparable(expected), _comparable(actual), COMPARED, sorted_entries=True)


def check_directory_equal(expected: Path, actual: Path) -> None:
    problems = directory_differences(expected, actual)
    assert not problems, f"{actual} differs from {expected}:\n" + "\n".join(problems)


def check_directory_equal_with_applier(actual: Path, applier: Applier) -> None:
    with tempfile.TemporaryDirectory(prefix="fstest-") as tmp:
        applier(Path(tmp))
        check_directory_equal(Path(tmp), actual)
