"""``erofstool verify``: an image holds exactly the content of an OCI layer tarball.

The images are real builders' output only: the corpus's mkfs.erofs ``--tar=f`` and ``--tar=i`` images of
its tarballs, Debian's mkfs.erofs ``--tar`` when it has one, and the snapshotter's conversion
(``build_layer``) of a tree that GNU tar unpacked the way containerd's applier unpacks a layer (AUFS
whiteouts become 0:0 character devices, opaque markers the ``trusted.overlay.opaque`` xattr). Every
mismatch is made by changing the tarball, never the image, and what a message says the image holds is
read from a kernel mount of it.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import io
import os
import random
import stat
import subprocess
import tarfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
import pyzstd

from snapshotter.convert import build_layer

from . import corpus
from .cli import device_args, run_tool
from .kernel import erofs_mount
from .snapshotter.oci import Layer
from .trees import TYPES, sha256_file

Members = list[tuple[tarfile.TarInfo, bytes | None]]
EPOCH = 1_600_000_000


# -- images of the corpus tarballs ------------------------------------------------------
def _corpus_pairs() -> list[tuple[str, str]]:
    """(image, tarball) for every corpus image built from one tarball: the tar-index images carry their tarball
    as their device, and the other images of the same source are built from the same tarball."""
    tarballs = {e["source"]: e["devices"][0] for e in corpus.images() if e["kind"] == "tar-index"}
    return [(e["name"], tarballs[e["source"]]) for e in corpus.images()
            if e["kind"] in ("tar", "tar-index", "flat") and e["source"] in tarballs]


CORPUS_PAIRS = _corpus_pairs()


def write_tar(members: Members, path: Path) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def corpus_members(tarball: str) -> Members:
    """The entries of a corpus tarball, to be changed and written again."""
    with tarfile.open(corpus.CORPUS / tarball, encoding="utf-8", errors="surrogateescape") as tar:
        return [(info, tar.extractfile(info).read() if info.isreg() else None) for info in tar]


def verify(image: str | os.PathLike, tarball: str | os.PathLike, devices=()) -> subprocess.CompletedProcess:
    return run_tool("verify", *device_args(devices), image, "--layer", tarball)


def assert_identical(proc: subprocess.CompletedProcess, image, tarball) -> None:
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert proc.stderr == ""
    assert proc.stdout.startswith(f"{os.fsdecode(image)}: identical to {os.fsdecode(tarball)}".encode())


@pytest.mark.parametrize(("name", "tarball"), CORPUS_PAIRS, ids=[name for name, _ in CORPUS_PAIRS])
def test_corpus_tar_images_hold_their_tarballs(name, tarball):
    """mkfs.erofs --tar=f (with --aufs: whiteouts in overlay form) and --tar=i images, and their flat forms."""
    path = corpus.CORPUS / tarball
    proc = verify(corpus.image_path(name), path, corpus.device_paths(name))
    assert_identical(proc, corpus.image_path(name), path)


def test_corpus_pairs_cover_every_tar_builder():
    kinds = {corpus.entry(name)["kind"] for name, _ in CORPUS_PAIRS}
    assert kinds == {"tar", "tar-index", "flat"}
    assert any("--aufs" in corpus.entry(name)["mkfs_args"] for name, _ in CORPUS_PAIRS)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_tarballs_are_read_by_their_content(tmp_path, compression):
    """gzip and zstd layers, recognised by their first bytes (the names say nothing)."""
    name, tarball = next((n, t) for n, t in CORPUS_PAIRS if n == "tar-full")
    raw = (corpus.CORPUS / tarball).read_bytes()
    packed = tmp_path / "layer"
    packed.write_bytes(gzip.compress(raw) if compression == "gzip" else pyzstd.compress(raw))
    assert_identical(verify(corpus.image_path(name), packed), corpus.image_path(name), packed)


def test_a_tarball_that_cannot_be_read_is_one_error_line(tmp_path):
    name, tarball = CORPUS_PAIRS[0]
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(gzip.compress((corpus.CORPUS / tarball).read_bytes())[:3000])
    proc = verify(corpus.image_path(name), cut)
    assert proc.returncode == 1 and proc.stdout == b""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"erofstool: {corpus.image_path(name)}: {cut}: "), proc.stderr


@pytest.mark.parametrize(("entry", "complaint"), [
    ((tarfile.LNKTYPE, {}, "nowhere"), "/etc/x: hard link to /nowhere, which is not in the layer"),
    ((tarfile.REGTYPE, {"mtime": "1e999999999"}, ""), "/etc/x: PAX mtime '1e999999999' is not a time"),
])
def test_a_layer_no_filesystem_can_hold_is_one_error_line(tmp_path, entry, complaint):
    name, tarball = CORPUS_PAIRS[0]
    kind, headers, linkname = entry
    info = tarfile.TarInfo("etc/x")
    info.type, info.pax_headers, info.linkname = kind, headers, linkname
    bad = write_tar([*corpus_members(tarball), (info, b"" if kind == tarfile.REGTYPE else None)], tmp_path / "bad.tar")
    proc = verify(corpus.image_path(name), bad)
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr == f"erofstool: {corpus.image_path(name)}: {bad}: {complaint}\n"


# -- a tarball with every kind of entry, and images built from it --------------------------
def sample_members() -> Members:
    """Entries a layer may hold: PAX xattrs (binary and empty values, trusted.*), hard links (across
    directories, to a long name), symlinks (long, dangling, absolute), devices (up to 12-bit majors and
    20-bit minors), a fifo, owners above 2^31, setuid and sticky modes, long names and paths, a name that
    is not UTF-8, two files alike in all but inode, a directory only implied by its child, whiteouts and an opaque
    directory, long zero runs, and nanosecond mtimes (and one before 1970)."""
    rng = random.Random(15)
    noise = rng.randbytes(300_000)
    zero_runs = rng.randbytes(70_000) + bytes(600_000) + rng.randbytes(5_000) + bytes(200_000)
    long_dir = "/deep/" + "/".join(f"level-{i:02d}-" + "d" * 20 for i in range(6))
    long_name = "n" * 254  # mkfs.erofs 1.5 (Debian 12) fails on a tree holding a 255-byte name
    layer = (Layer().dir(".").dir("/etc").file("/etc/hostname", b"layer\n")
             .dir("/etc/app", 0o750, uid=1000, gid=1000)
             .file("/etc/app/config", b"key = value\n" * 50, 0o640, uid=1000, gid=1000,
                   xattrs={"user.color": "blue", "user.empty": "", "user.bytes": "\x00\x01é\x7f",
                           "trusted.note": "kept by builders"})
             .symlink("/etc/link", "hostname").symlink("/etc/dangling", "/nonexistent/path")
             .symlink("/etc/long-link", "/".join(["component"] * 100))
             .dir("/data").file("/data/noise", noise).file("/data/zero-runs", zero_runs, 0o600)
             .file("/data/empty", b"").file("/data/twin-a", b"twin\n").file("/data/twin-b", b"twin\n")
             .file("/data/zeros", bytes(1 << 18)).file("/data/caf\udce9", b"latin-1\n")
             .file("/data/setuid", b"#!/bin/sh\n", 0o4755)
             .file("/data/owned", b"big ids\n", uid=4_000_000_000, gid=3_999_999_999)
             .hardlink("/data/noise-link", "/data/noise").whiteout("/data/removed")
             .hardlink("/etc/config-link", "/etc/app/config").dir("/tmp", 0o1777).whiteout("/tmp/cache")
             .dir("/opaque").opaque("/opaque").file("/opaque/kept", b"only this\n")
             .file("/implied/child", b"no directory entry above\n")
             .dir("/deep").file(f"{long_dir}/{long_name}", b"long\n")
             .hardlink("/deep/link-to-long", f"{long_dir}/{long_name}"))
    for i in range(6):  # the directories above the long name listed after it
        layer.dir("/deep/" + "/".join(f"level-{j:02d}-" + "d" * 20 for j in range(i + 1)))
    members = layer.members
    members.append((_device("dev/null", tarfile.CHRTYPE, 1, 3), None))
    members.append((_device("dev/sda1", tarfile.BLKTYPE, 8, 1), None))
    members.append((_device("dev/largest", tarfile.CHRTYPE, 4095, 1048575), None))
    members.append((_device("run/fifo", tarfile.FIFOTYPE, 0, 0), None))
    for i, (info, _) in enumerate(members):
        set_mtime(info, f"{EPOCH + i}.{(i * 104_729) % 1_000_000_000:09d}")
    set_mtime(members[_find(members, "data/empty")][0], "-86401")  # mkfs.erofs 1.8 misreads -86401.000000007
    set_mtime(members[_find(members, "data/twin-b")][0], members[_find(members, "data/twin-a")][0].pax_headers["mtime"])
    return members


def _device(name: str, kind: bytes, major: int, minor: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.devmajor, info.devminor = kind, 0o660, major, minor
    return info


def set_mtime(info: tarfile.TarInfo, pax: str) -> None:
    """A PAX mtime with nanoseconds (tarfile would only write the float)."""
    info.pax_headers = {**info.pax_headers, "mtime": pax}
    info.mtime = float(pax)


def apply_layer(tarball: Path, dest: Path, *, overlay_whiteouts: bool) -> None:
    """Unpack as containerd's applier does: GNU tar keeps owners, modes, nanosecond mtimes (a directory's
    after its contents), devices, links and every xattr; with ``overlay_whiteouts`` each AUFS whiteout then
    becomes a 0:0 character device with the marker's owner and each opaque marker ``trusted.overlay.opaque=y``,
    and the directory's mtime is put back."""
    subprocess.run(["tar", "--extract", f"--file={tarball}", f"--directory={dest}", "--same-permissions",
                    "--same-owner", "--numeric-owner", "--xattrs", "--xattrs-include=*"], check=True)
    for top, _, files in os.walk(dest) if overlay_whiteouts else ():
        markers = [name for name in files if name.startswith(".wh.")]
        if not markers:
            continue
        mtime = os.lstat(top).st_mtime_ns
        for name in markers:
            marker = os.path.join(top, name)
            if name == ".wh..wh..opq":
                os.setxattr(top, "trusted.overlay.opaque", b"y")
            else:
                owner = os.lstat(marker)
                whiteout = os.path.join(top, name.removeprefix(".wh."))
                os.mknod(whiteout, stat.S_IFCHR, 0)
                os.lchown(whiteout, owner.st_uid, owner.st_gid)
            os.unlink(marker)
        os.utime(top, ns=(mtime, mtime))


def mkfs_has_tar() -> bool:
    usage = subprocess.run(["mkfs.erofs", "--help"], capture_output=True, text=True)
    return "--tar" in usage.stdout + usage.stderr


@dataclasses.dataclass
class Built:
    builder: str
    tarball: Path
    image: Path
    mountpoint: str  # a kernel mount of the image: what the image holds, as the kernel shows it

    def shows(self, path: str) -> os.stat_result:
        return os.lstat(os.path.join(self.mountpoint, path.lstrip("/")))


BUILDERS = {
    "overlay-whiteouts": "the snapshotter's conversion of the tree containerd's applier unpacks",
    "aufs-whiteouts": "the snapshotter's conversion of the tree as tar unpacks it (AUFS markers kept as files)",
    "mkfs-tar": "mkfs.erofs --tar=f",
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def built(request, scratch):
    """The sample tarball and an image of it by one of the ``BUILDERS``, mounted by the kernel."""
    work = Path(scratch) / request.param
    work.mkdir()
    tarball = write_tar(sample_members(), work / "layer.tar")
    image = work / "layer.erofs"
    if request.param == "mkfs-tar":
        if not mkfs_has_tar():
            pytest.skip("this mkfs.erofs has no --tar")
        subprocess.run(["mkfs.erofs", "--quiet", "--tar=f", str(image), str(tarball)], check=True)
    else:
        tree = work / "tree"
        tree.mkdir()
        apply_layer(tarball, tree, overlay_whiteouts=request.param == "overlay-whiteouts")
        build_layer(tree, image)
    with erofs_mount(str(image)) as mountpoint:
        yield Built(request.param, tarball, image, mountpoint)


def test_built_image_holds_its_tarball(built):
    assert_identical(verify(built.image, built.tarball), built.image, built.tarball)


def test_whiteouts_are_stored_in_the_form_the_builder_uses(built):
    """Both forms of the layer's AUFS markers really are in the images the comparison accepts."""
    overlay = built.builder == "overlay-whiteouts"
    removed = built.shows("/data/removed") if overlay else built.shows("/data/.wh.removed")
    assert stat.S_ISCHR(removed.st_mode) and removed.st_rdev == 0 if overlay else stat.S_ISREG(removed.st_mode)
    opaque_xattrs = os.listxattr(os.path.join(built.mountpoint, "opaque"))
    assert ("trusted.overlay.opaque" in opaque_xattrs) == overlay
    assert os.path.exists(os.path.join(built.mountpoint, "opaque/.wh..wh..opq")) != overlay


def test_libarchive_xattr_records_are_read(built, tmp_path):
    """bsdtar's form of an xattr: ``LIBARCHIVE.xattr.`` and the %-escaped name, the value in base64."""
    members = sample_members()
    info = members[_find(members, "etc/app/config")][0]
    headers = {}
    for key, value in info.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = urllib.parse.quote(key.removeprefix("SCHILY.xattr."), safe="")
            key = f"LIBARCHIVE.xattr.{name}"
            value = base64.b64encode(value.encode("utf-8", "surrogateescape")).decode().rstrip("=")
        headers[key] = value
    assert headers != info.pax_headers
    info.pax_headers = headers
    tarball = write_tar(members, tmp_path / "bsdtar-style.tar")
    assert_identical(verify(built.image, tarball), built.image, tarball)


# -- mismatches: the tarball changed, the image not -------------------------------------------
def _find(members: Members, name: str) -> int:
    return next(i for i, (info, _) in enumerate(members) if info.name == name)


def _replace(members: Members, entry: str, data: bytes | None = None, **fields) -> None:
    """Change header fields of ``entry``, or its data."""
    i = _find(members, entry)
    info, old = members[i]
    for key, value in fields.items():
        setattr(info, key, value)
    members[i] = (info, old if data is None else data)


def _flip_byte(name: str) -> Callable[[Members], None]:
    def change(members: Members) -> None:
        data = bytearray(members[_find(members, name)][1] or b"")
        data[len(data) // 2] ^= 0x01
        _replace(members, name, data=bytes(data))

    return change


def _add(name: str) -> Callable[[Members], None]:
    return lambda members: members.append((tarfile.TarInfo(name), b""))


def _drop(name: str) -> Callable[[Members], None]:
    def change(members: Members) -> None:
        del members[_find(members, name)]

    return change


def _copy_instead_of_link(link: str) -> Callable[[Members], None]:
    """The hard link becomes a file of its own with the same bytes and attributes."""

    def change(members: Members) -> None:
        i = _find(members, link)
        source, data = members[_find(members, members[i][0].linkname)]
        copy = tarfile.TarInfo(link)
        for key in ("size", "mode", "uid", "gid", "mtime", "pax_headers"):
            setattr(copy, key, getattr(source, key))
        members[i] = (copy, data)

    return change


def _link_instead_of_copy(name: str, source: str) -> Callable[[Members], None]:
    def change(members: Members) -> None:
        link = tarfile.TarInfo(name)
        link.type, link.linkname = tarfile.LNKTYPE, source
        members[_find(members, name)] = (link, None)

    return change


def _noise_changed(b: Built) -> str:
    members = sample_members()
    _flip_byte("data/noise")(members)
    layer = hashlib.sha256(members[_find(members, "data/noise")][1] or b"").hexdigest()
    image = sha256_file(os.path.join(b.mountpoint, "data/noise"))
    return f"content differs (sha256 {layer} in the layer, {image} in the image)"


def _show_ns(ns: int) -> str:
    seconds, frac = divmod(abs(ns), 10**9)
    return f"{'-' if ns < 0 else ''}{seconds}.{frac:09d}"


def _xattr(b: Built, path: str, name: str) -> bytes:
    return os.getxattr(os.path.join(b.mountpoint, path.lstrip("/")), name, follow_symlinks=False)


# each mismatch: how the tarball changes, the path reported, and what the line says (given the image)
MISMATCHES: dict[str, tuple[Callable[[Members], None], str, Callable[[Built], str]]] = {
    "changed byte": (_flip_byte("data/noise"), "/data/noise", _noise_changed),
    "missing file": (_add("etc/added"), "/etc/added", lambda b: "file in the layer, missing from the image"),
    "extra file": (_drop("etc/hostname"), "/etc/hostname", lambda b: "file in the image, not in the layer"),
    "type": (lambda m: _replace(m, "run/fifo", type=tarfile.REGTYPE, data=b""), "/run/fifo",
             lambda b: f"type file in the layer, {TYPES[stat.S_IFMT(b.shows('/run/fifo').st_mode)]} in the image"),
    "mode": (lambda m: _replace(m, "etc/app/config", mode=0o600), "/etc/app/config",
             lambda b: f"mode 0600 in the layer, {stat.S_IMODE(b.shows('/etc/app/config').st_mode):04o} in the image"),
    "owner": (lambda m: _replace(m, "data/owned", uid=7), "/data/owned",
              lambda b: f"owner 7:{b.shows('/data/owned').st_gid} in the layer, "
                        f"{b.shows('/data/owned').st_uid}:{b.shows('/data/owned').st_gid} in the image"),
    "mtime": (lambda m: set_mtime(m[_find(m, "etc/hostname")][0], f"{EPOCH}.000000001"), "/etc/hostname",
              lambda b: f"mtime {EPOCH}.000000001 in the layer, {_show_ns(b.shows('/etc/hostname').st_mtime_ns)} "
                        "in the image"),
    "symlink target": (lambda m: _replace(m, "etc/link", linkname="elsewhere"), "/etc/link",
                       lambda b: "symlink target 'elsewhere' in the layer, "
                                 f"{os.readlink(os.path.join(b.mountpoint, 'etc/link'))!r} in the image"),
    "xattr value": (lambda m: _replace(m, "etc/app/config", pax_headers={
                        **m[_find(m, "etc/app/config")][0].pax_headers, "SCHILY.xattr.user.color": "red"}),
                    "/etc/app/config",
                    lambda b: f"xattr user.color is 'red' in the layer, "
                              f"{_xattr(b, '/etc/app/config', 'user.color').decode()!r} in the image"),
    "device numbers": (lambda m: _replace(m, "dev/sda1", devminor=2), "/dev/sda1",
                       lambda b: f"device 8:2 in the layer, {os.major(b.shows('/dev/sda1').st_rdev)}:"
                                 f"{os.minor(b.shows('/dev/sda1').st_rdev)} in the image"),
    "hard link broken": (_copy_instead_of_link("data/noise-link"), "/data/noise-link",
                         lambda b: "hard link to /data/noise in the image, a separate file in the layer"),
    "hard link added": (_link_instead_of_copy("data/twin-b", "data/twin-a"), "/data/twin-b",
                        lambda b: "hard link to /data/twin-a in the layer, a separate file in the image"),
    "whiteout missing": (_add("etc/.wh.passwd"), "/etc/passwd",
                         lambda b: "whiteout in the layer, missing from the image"),
    "opaque missing": (_add("data/.wh..wh..opq"), "/data", lambda b: "opaque in the layer, not in the image"),
}


@pytest.mark.parametrize("kind", list(MISMATCHES))
def test_each_kind_of_mismatch_is_named(built, tmp_path, kind):
    change, path, expected = MISMATCHES[kind]
    members = sample_members()
    change(members)
    altered = write_tar(members, tmp_path / "altered.tar")
    proc = verify(built.image, altered)
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr == f"erofstool: {built.image}: 1 difference(s) from {altered}\n"
    assert proc.stdout.decode() == f"{path}: {expected(built)}\n"


# mismatches against mkfs.erofs 1.9's own tar images: image, how its tarball changes, every line expected
CORPUS_MISMATCHES: dict[str, tuple[str, Callable[[Members], None], list[str]]] = {
    "whiteout renamed (--tar=f --aufs)": ("layer2",
                                          lambda m: _replace(m, "opt/.wh.remove_me.txt", name="opt/.wh.other"),
                                          ["/opt/other: whiteout in the layer, missing from the image",
                                           "/opt/remove_me.txt: chardev in the image, not in the layer"]),
    "opaque marker dropped (--tar=f --aufs)": ("layer2", _drop("opt/opaque/.wh..wh..opq"),
                                               ["/opt/opaque: xattr trusted.overlay.opaque in the image, "
                                                "not in the layer"]),
    "hard link broken (--tar=i)": ("tlayer1", _copy_instead_of_link("usr/share/doc/c-hard.txt"),
                                   ["/usr/share/doc/c.txt: hard link to /usr/share/doc/c-hard.txt in the image, "
                                    "a separate file in the layer"]),  # c-hard.txt comes first in the directory
    "changed byte (--tar=i)": ("tar-index", _flip_byte("tar_extras/random_20k"),
                               ["/tar_extras/random_20k: content differs (sha256 "]),
}


@pytest.mark.parametrize("kind", list(CORPUS_MISMATCHES))
def test_mismatches_with_mkfs_tar_images(tmp_path, kind):
    name, change, expected = CORPUS_MISMATCHES[kind]
    members = corpus_members(dict(CORPUS_PAIRS)[name])
    change(members)
    altered = write_tar(members, tmp_path / "altered.tar")
    proc = verify(corpus.image_path(name), altered, corpus.device_paths(name))
    assert proc.returncode == 1, proc.stdout
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == len(expected), lines
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(start), line
