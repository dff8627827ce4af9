"""Images made at test time by the installed mkfs.erofs, read by the library and by the kernel.

One generated tree (sizes around block boundaries, sparse files, a big
directory, deep paths, links, devices, xattrs of every namespace, odd modes,
owners and times) is packed once per mkfs option set. For each image, the
library's view must equal the kernel's file-backed mount in every key, byte
ranges at and across block and pcluster boundaries must read the same, and
fsck must find nothing wrong.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import unicodedata

import pytest

from erofsfuse.cli.fsck import check
from erofsfuse.erofs import ondisk as d
from erofsfuse.erofs.image import ErofsImage

from .kernel import erofs_mount
from .trees import describe_image, describe_path, diff_trees

MKFS = shutil.which("mkfs.erofs")
pytestmark = [
    pytest.mark.skipif(MKFS is None, reason="mkfs.erofs is not installed"),
    pytest.mark.root,
]

BLOB = "<blob>"
# option sets that the installed mkfs.erofs (1.5 on Debian 12) accepts: no -b, lz4/lz4hc only
FLAG_SETS = {
    "default": [],
    "noinline": ["-Enoinline_data"],
    "lz4": ["-zlz4"],
    "lz4hc-9": ["-zlz4hc,9"],
    "lz4hc-C16k": ["-zlz4hc", "-C16384"],
    "lz4hc-C64k-ztail": ["-zlz4hc", "-C65536", "-Eztailpacking"],
    "lz4hc-legacy": ["-zlz4hc", "-Elegacy-compress"],
    "lz4-C64k-legacy": ["-zlz4", "-C65536", "-Elegacy-compress"],
    "lz4-max-extent": ["-zlz4hc", "-C32768", "--max-extent-bytes=16384"],
    "chunk-8k": ["--chunksize=8192"],
    "chunk-64k-indexes": ["--chunksize=65536", "-Eforce-chunk-indexes"],
    "chunk-16k-blockmap": ["--chunksize=16384", "-Eforce-inode-blockmap"],
    "blobdev": ["--chunksize=8192", f"--blobdev={BLOB}"],
    "xattrs-shared": ["-x0"],
    "inode-extended": ["-Eforce-inode-extended"],
    "inode-compact": ["-Eforce-inode-compact", "--all-root"],  # compact inodes hold 16-bit owners only
    "fixed-time": ["-T1500000000"],
    "ignore-mtime": ["--ignore-mtime"],
    "all-root": ["--all-root"],
    "force-owner": ["--force-uid=4294967294", "--force-gid=65536"],
}


# what some option sets must turn on, so that the table really covers those layouts
EXPECTED_INCOMPAT = {
    "lz4": d.INCOMPAT_LZ4_0PADDING,
    "lz4hc-C16k": d.INCOMPAT_LZ4_0PADDING | d.INCOMPAT_COMPR_CFGS,
    "lz4hc-C64k-ztail": d.INCOMPAT_ZTAILPACKING | d.INCOMPAT_COMPR_CFGS,
    "lz4-C64k-legacy": d.INCOMPAT_COMPR_CFGS,
    "chunk-8k": d.INCOMPAT_CHUNKED_FILE,
    "chunk-64k-indexes": d.INCOMPAT_CHUNKED_FILE,
    "blobdev": d.INCOMPAT_CHUNKED_FILE | d.INCOMPAT_DEVICE_TABLE,
}


def pcluster_size(flags: list[str]) -> int:
    """The largest pcluster or chunk the flags ask for: reads are aimed at its boundaries."""
    for flag in flags:
        if flag.startswith("-C"):
            return int(flag[2:])
        if flag.startswith("--chunksize="):
            return int(flag.split("=")[1])
    return 4096


# -- the source tree ------------------------------------------------------------------
def content(rnd: random.Random, kind: str, size: int) -> bytes:
    if kind == "zeros":
        return bytes(size)
    if kind == "random":
        return rnd.randbytes(size)
    words = [b"erofs", b"block", b"cluster", b"inode", b"xattr", b"\n", b"data", b"kernel", b"  "]
    text = b" ".join(rnd.choice(words) for _ in range(size // 4 + 1))[:size]
    if kind == "text":
        return text
    # mixed: compressible text, random islands and zero runs
    out = bytearray(text)
    for start in range(0, size, 20000):
        out[start : start + 3000] = rnd.randbytes(len(out[start : start + 3000]))
        out[start + 9000 : start + 14000] = bytes(len(out[start + 9000 : start + 14000]))
    return bytes(out)


def write(path: str, data: bytes = b"", mode: int = 0o644) -> str:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def build_tree(root: str) -> None:
    rnd = random.Random(20240601)
    times: dict[str, int] = {}
    j = os.path.join
    for sub in ("files", "sparse", "bigdir", "links", "special", "xattrs", "perms", "owners", "times", "names"):
        os.mkdir(j(root, sub))

    sizes = [0, 1, 511, 512, 513, 4095, 4096, 4097, 8191, 8192, 8193, 16385, 65535, 65536, 65659, 131079, 300001]
    kinds = ["text", "random", "zeros", "mixed"]
    for i, size in enumerate(sizes):
        write(j(root, "files", f"size_{size:06d}_{kinds[i % 4]}"), content(rnd, kinds[i % 4], size))
    write(j(root, "files", "big_mixed"), content(rnd, "mixed", 1_500_000))
    write(j(root, "files", "big_text"), content(rnd, "text", 700_001))
    write(j(root, "files", "dup_a"), content(random.Random(7), "random", 50_000))
    write(j(root, "files", "dup_b"), content(random.Random(7), "random", 50_000))

    for name, islands, size in [("hole_head", [(200_000, 5000)], 205_000),
                                ("hole_middle", [(0, 4096), (300_000, 100)], 300_100),
                                ("hole_tail", [(0, 9000)], 400_000), ("all_hole", [], 1 << 20),
                                ("unaligned", [(1000, 3), (70_001, 5000), (140_000, 1)], 150_000)]:
        with open(j(root, "sparse", name), "wb") as f:
            f.truncate(size)
            for offset, length in islands:
                f.seek(offset)
                f.write(content(rnd, "random", length))

    for i in range(1100):
        path = j(root, "bigdir", f"entry_{i:05d}" + "_x" * (i % 7))
        if i % 50 == 0:
            os.mkdir(path)
        elif i % 11 == 0:
            os.symlink(f"target_{i}", path)
        elif i % 37 == 0:
            os.mkfifo(path)
        else:
            write(path, content(rnd, "text", i % 300))

    deep = j(root, "deep")
    for level in range(30):
        deep = j(deep, f"level{level:02d}_" + "d" * 85)
    os.makedirs(deep)
    write(j(deep, "leaf"), b"at the bottom\n")

    links = j(root, "links")
    write(j(links, "target"), b"hard link target\n")
    os.link(j(links, "target"), j(links, "hard_2"))
    os.link(j(links, "target"), j(links, "hard_3"))
    os.symlink("target", j(links, "sym_short"))
    os.symlink("/files/size_004096_random", j(links, "sym_abs"))
    os.symlink("nowhere/at/all", j(links, "sym_dangling"))
    os.symlink("a" * 200, j(links, "sym_200"))
    os.symlink("/".join(["long" * 20] * 48), j(links, "sym_long"))
    os.link(j(links, "sym_short"), j(links, "hard_to_symlink"), follow_symlinks=False)
    os.mkfifo(j(links, "fifo"))
    os.link(j(links, "fifo"), j(links, "hard_to_fifo"))

    special = j(root, "special")
    for name, kind, major, minor, mode in [("chr_0_0", stat.S_IFCHR, 0, 0, 0), ("chr_1_3", stat.S_IFCHR, 1, 3, 0o666),
                                           ("chr_max", stat.S_IFCHR, 4095, 1048575, 0o644),
                                           ("blk_8_1", stat.S_IFBLK, 8, 1, 0o660),
                                           ("blk_259_65536", stat.S_IFBLK, 259, 65536, 0o600)]:
        os.mknod(j(special, name), kind | 0o600, os.makedev(major, minor))
        os.chmod(j(special, name), mode)
    os.mkfifo(j(special, "fifo"), 0o644)
    os.mknod(j(special, "socket"), stat.S_IFSOCK | 0o755)

    xattrs = j(root, "xattrs")
    plain = write(j(xattrs, "plain"), b"x")
    for name, value in [(b"user.text", b"hello"), (b"user.empty", b""), (b"user.binary", bytes(range(256))),
                        (b"trusted.overlay.opaque", b"y"), (b"security.selinux", b"system_u:object_r:etc_t:s0\0")]:
        os.setxattr(plain, name, value)
    os.setxattr(write(j(xattrs, "long_value"), b""), b"user.long", rnd.randbytes(3000))
    os.setxattr(write(j(xattrs, "long_name"), b""), b"user." + b"n" * 200, b"v")
    many = write(j(xattrs, "many"), b"")
    for i in range(40):
        os.setxattr(many, f"user.attr_{i:02d}".encode(), f"value {i}".encode() * (i % 5))
    for i in range(12):  # the same pairs on many files: shared xattrs
        shared = write(j(xattrs, f"shared_{i:02d}"), b"s")
        os.setxattr(shared, b"user.shared_common", b"the same value everywhere")
        os.setxattr(shared, b"trusted.shared", b"t")
        os.setxattr(shared, b"user.own", str(i).encode())
    os.mkdir(j(xattrs, "dir"))
    os.setxattr(j(xattrs, "dir"), b"user.on_dir", b"d")
    os.symlink("plain", j(xattrs, "symlink"))
    os.setxattr(j(xattrs, "symlink"), b"trusted.on_symlink", b"l", follow_symlinks=False)
    os.mkfifo(j(xattrs, "fifo"))
    os.setxattr(j(xattrs, "fifo"), b"security.on_fifo", b"f")
    acl_user = bytes.fromhex("02000000" "01000600ffffffff" "02000700e8030000" "04000400ffffffff" "10000700ffffffff"
                             "20000400ffffffff")
    acl_file = write(j(xattrs, "acl_file"), b"acl", 0o674)
    os.setxattr(acl_file, b"system.posix_acl_access", acl_user)
    os.mkdir(j(xattrs, "acl_dir"))
    os.setxattr(j(xattrs, "acl_dir"), b"system.posix_acl_default", acl_user)

    perms = j(root, "perms")
    for name, mode in [("none", 0), ("setuid", 0o4755), ("setgid", 0o2755), ("both", 0o6711), ("all_bits", 0o7777),
                       ("sticky_file", 0o1644), ("write_only", 0o222)]:
        write(j(perms, name), b"#!/bin/sh\n", mode)
    for name, mode in [("dir_000", 0), ("dir_sticky", 0o1777), ("dir_setgid", 0o2775)]:
        os.mkdir(j(perms, name))
        os.chmod(j(perms, name), mode)

    owners = j(root, "owners")
    for uid, gid in [(0, 0), (1, 1), (1000, 1000), (65535, 65535), (65536, 100), (100000, 200000),
                     (2**31, 3_000_000_000), (4294967294, 4294967294)]:
        os.chown(write(j(owners, f"u{uid}_g{gid}"), b"o"), uid, gid)
    os.symlink("u0_g0", j(owners, "symlink_u2000"))
    os.chown(j(owners, "symlink_u2000"), 2000, 2001, follow_symlinks=False)

    for name, ns in [("epoch_0", 0), ("one_ns", 1), ("ns_precise", 1_600_000_000_123_456_789),
                     ("minus_half_second", -500_000_000), ("y1901", -(2**31) * 10**9 + 7), ("y2038", 2**31 * 10**9),
                     ("y2106", (2**32 + 5) * 10**9 + 999_999_999), ("y2446", 17_179_869_183 * 10**9)]:
        times[write(j(root, "times", name), b"t")] = ns
    os.symlink("epoch_0", j(root, "times", "symlink_old"))
    times[j(root, "times", "symlink_old")] = 1_000_000_000_000_000_001
    os.mkdir(j(root, "times", "dir_ns"))
    times[j(root, "times", "dir_ns")] = 1_234_567_890_987_654_321

    names = j(root, "names")
    # 254 bytes: mkfs.erofs 1.5 fails on 255-byte names (the corpus, from a newer mkfs, has them)
    for name in ["caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9"), "emoji_\U0001f600",
                 "rtl_\u05e9\u05dc\u05d5\u05dd", "zero\u200bwidth", "with space", "new\nline", "back\\slash",
                 "n" * 254, "-dash", "!bang", "~tilde"]:
        write(j(names, name), name.encode())
    write(os.path.join(os.fsencode(names), b"latin1_\xe9\xff"), b"not utf-8")

    for path, ns in times.items():
        os.utime(path, ns=(ns, ns), follow_symlinks=False)


@pytest.fixture(scope="module")
def tree(scratch):
    root = os.path.join(scratch, "tree")
    os.mkdir(root)
    build_tree(root)
    return root


# -- the tests --------------------------------------------------------------------------
def mkfs(tree_root: str, out_dir: str, flags: list[str]) -> tuple[str, list[str]]:
    image = os.path.join(out_dir, "image.erofs")
    devices = []
    args = []
    for flag in flags:
        if BLOB in flag:
            devices.append(os.path.join(out_dir, "blob"))
            open(devices[-1], "wb").close()  # mkfs.erofs 1.8 writes the blob only into a file that exists
            flag = flag.replace(BLOB, devices[-1])
        args.append(flag)
    proc = subprocess.run([MKFS, "--quiet", "-U6ba7b810-9dad-11d1-80b4-00c04fd430c8", *args, image, tree_root],
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode(errors="replace")[-3000:]
    return image, devices


def read_ranges(size: int, block: int, pcluster: int, rnd: random.Random) -> list[tuple[int, int]]:
    """Byte ranges at, inside and across block and pcluster boundaries, plus random ones."""
    ranges = [(0, size), (0, 1), (max(0, size - 1), 1), (size, 10)]
    for unit in {block, pcluster}:
        for edge in range(unit, size, unit)[:6]:
            ranges += [(edge - 1, 2), (edge, 1), (edge - 100, 200), (edge - 1, unit + 2)]
    ranges += [(rnd.randrange(size), rnd.randrange(1, 70_000)) for _ in range(8)]
    return ranges


@pytest.mark.parametrize("label", list(FLAG_SETS))
def test_library_matches_kernel(label, tree, tmp_path):
    flags = FLAG_SETS[label]
    out_dir = str(tmp_path)
    image, devices = mkfs(tree, out_dir, flags)
    rnd = random.Random(label)
    try:
        with ErofsImage(image, devices) as img, erofs_mount(image, devices) as mnt:
            expected = EXPECTED_INCOMPAT.get(label, 0)
            assert img.sb.feature_incompat & expected == expected
            layouts = {ino.layout for _, ino in img.walk()}
            if "legacy" in label:  # full (not compacted) compression indexes only
                assert d.LAYOUT_COMPRESSED_FULL in layouts and d.LAYOUT_COMPRESSED_COMPACT not in layouts
            problems = diff_trees(describe_path(mnt), describe_image(img))
            assert not problems, "\n".join(problems)
            block = img.sb.block_size
            for path, ino in img.walk():
                if not ino.is_reg or ino.size < block:
                    continue
                with open(mnt.encode() + path, "rb") as f:
                    for offset, length in read_ranges(ino.size, block, pcluster_size(flags), rnd):
                        kernel = os.pread(f.fileno(), length, offset)
                        assert img.read(ino, offset, length) == kernel, (path, offset, length)
            report = check(img)
            assert report.clean, "\n".join(map(str, report.problems[:20]))
    finally:
        for path in (image, *devices):
            os.unlink(path)
