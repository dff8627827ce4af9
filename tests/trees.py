"""Describe a filesystem tree in the corpus manifest format, and compare two descriptions.

The same description is produced from a mounted or extracted directory
(``describe_path``) and from the library (``describe_image``), so every
view can be checked against the kernel's manifest or a live kernel mount.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

from erofsfuse.erofs.image import ErofsImage

ALL_KEYS = ("type", "mode", "uid", "gid", "size", "nlink", "ino", "blocks", "rdev", "mtime_ns", "target", "xattrs",
            "sha256", "entries")
TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _xattrs(path: str) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    return {name: os.getxattr(path, name, follow_symlinks=False).hex() for name in sorted(names)}


def describe_path(root: str, *, content: bool = True, xattrs: bool = True, denied_ok: bool = False) -> dict[str, dict]:
    """Manifest-style entries for the tree at ``root``, children in readdir order.

    With ``denied_ok``, what the caller may not read is left as None (for
    views taken as an unprivileged user).
    """
    out: dict[str, dict] = {}

    def attempt(func, *args):
        try:
            return func(*args)
        except PermissionError:
            if denied_ok:
                return None
            raise

    def visit(rel: str, path: str) -> None:
        try:
            st = os.lstat(path)
        except PermissionError as exc:
            if exc.errno != errno.EPERM:
                raise
            out[rel] = {"error": "EPERM"}  # overlayfs refuses some lower files outright
            return
        kind = TYPES[stat.S_IFMT(st.st_mode)]
        children = attempt(os.listdir, path) if kind == "dir" else None
        out[rel] = entry(
            kind, st, ino=f"{st.st_dev}:{st.st_ino}", rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)),
            target=os.readlink(path) if kind == "symlink" else None,
            xattrs=_xattrs(path) if xattrs else None,
            sha256=attempt(sha256_file, path) if kind == "file" and content else None,
            entries=children,
        )
        for name in children or ():
            visit(("" if rel == "/" else rel) + "/" + name, os.path.join(path, name))

    visit("/", root)
    return out


def describe_image(img: ErofsImage) -> dict[str, dict]:
    """Manifest-style entries for an image, read through the library."""
    out: dict[str, dict] = {}
    for raw_path, ino in img.walk():
        st = img.stat(ino)
        kind = img.file_type(ino)
        digest = None
        if kind == "file":
            h = hashlib.sha256()
            for off in range(0, ino.size, 1 << 20):
                h.update(img.read(ino, off, 1 << 20))
            digest = h.hexdigest()
        out[os.fsdecode(raw_path)] = entry(
            kind, st, ino=st.st_ino, rdev=(st.st_rdev_major, st.st_rdev_minor),
            target=os.fsdecode(img.readlink(ino)) if kind == "symlink" else None,
            xattrs={os.fsdecode(k): v.hex() for k, v in sorted(img.xattrs(ino))},
            sha256=digest,
            entries=[os.fsdecode(n) for n in img.listdir(ino)] if kind == "dir" else None,
        )
    return out


def entry(kind: str, st, *, ino, rdev: tuple[int, int], target, xattrs, sha256, entries) -> dict:
    """One manifest entry from stat-like fields (``ino`` only matters for grouping hard links)."""
    return {
        "type": kind,
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "size": st.st_size,
        "nlink": st.st_nlink,
        "ino": ino,
        "blocks": st.st_blocks,
        "rdev": {"major": rdev[0], "minor": rdev[1]} if kind in ("chardev", "blockdev") else None,
        "mtime_ns": st.st_mtime_ns,
        "target": target,
        "xattrs": xattrs,
        "sha256": sha256,
        "entries": entries,
    }


def _link_groups(tree: dict[str, dict]) -> dict[str, frozenset[str]]:
    by_ino: dict[int, set[str]] = {}
    for path, e in tree.items():
        if e.get("type", "dir") != "dir":
            by_ino.setdefault(e["ino"], set()).add(path)
    return {path: frozenset(group) for group in by_ino.values() for path in group}


def diff_trees(expected: dict[str, dict], actual: dict[str, dict], keys=ALL_KEYS, *,
               sorted_entries: bool = False, limit: int = 20) -> list[str]:
    """Human-readable differences; ``ino`` is compared as hard-link grouping, not by value."""
    problems: list[str] = []
    for path in sorted(set(expected) - set(actual)):
        problems.append(f"missing: {path}")
    for path in sorted(set(actual) - set(expected)):
        problems.append(f"unexpected: {path}")
    groups_e = _link_groups(expected) if "ino" in keys else {}
    groups_a = _link_groups(actual) if "ino" in keys else {}
    for path in sorted(set(expected) & set(actual)):
        e, a = expected[path], actual[path]
        if "error" in e or "error" in a:
            if e.get("error") != a.get("error"):
                problems.append(f"{path}: {e.get('error', 'readable')} != {a.get('error', 'readable')}")
            continue
        for key in keys:
            if key == "ino":
                group_e, group_a = sorted(groups_e.get(path, ())), sorted(groups_a.get(path, ()))
                if group_e != group_a:
                    problems.append(f"{path}: hard links {group_e} != {group_a}")
                continue
            ev, av = e[key], a[key]
            if key == "entries" and sorted_entries and ev is not None and av is not None:
                ev, av = sorted(ev), sorted(av)
            if ev != av:
                problems.append(f"{path}: {key} {str(ev)[:120]} != {str(av)[:120]}")
        if len(problems) >= limit:
            break
    return problems[:limit]
