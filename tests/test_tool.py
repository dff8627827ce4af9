"""erofstool, run as a command, against the corpus manifests (what the kernel showed for each image)."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import io
import os
import posixpath
import re
import shutil
import stat
import subprocess
import sys

import pytest

from erofsfuse.cli import tool as tool_module
from erofsfuse.cli.progress import Progress
from erofsfuse.erofs import ondisk as d

from . import corpus
from .cli import assert_one_error_line, device_args, run_tool
from .trees import ALL_KEYS, TYPES, describe_path, diff_trees

# a few images that between them have every layout, compression and xattr kind
SAMPLE_IMAGES = ["plain", "lz4hc-C1M-big", "zstd-48bit", "tar-index", "xattr-long-prefixes", "blobdev",
                 "chunk-16k-blockmap", "metabox-lz4hc-lzma", "lzma-C64k-ztail-frag", "deflate-C64k-ztail"]
IFMT = {name: fmt for fmt, name in TYPES.items()}


def tool(command: str, name: str, *args: str):
    return run_tool(command, *device_args(corpus.device_paths(name)), corpus.image_path(name), *args)


def without_dir_sizes(tree: dict[str, dict]) -> dict[str, dict]:
    """A directory's size is the destination filesystem's own business; everything else must match."""
    return {path: {**e, "size": None} if e["type"] == "dir" else e for path, e in tree.items()}


def samples(entries: dict[str, dict]) -> list[str]:
    """Paths worth a closer look: the first of each type, the largest files, most xattrs, longest target."""
    picked = {}
    for path, e in entries.items():
        picked.setdefault(e["type"], path)
    files = sorted((p for p, e in entries.items() if e["type"] == "file"), key=lambda p: -entries[p]["size"])
    links = [p for p, e in entries.items() if e["type"] == "symlink"]
    out = [*picked.values(), *files[:3], max(entries, key=lambda p: len(entries[p]["xattrs"]))]
    if links:
        out.append(max(links, key=lambda p: len(entries[p]["target"])))
    return list(dict.fromkeys(out))


# -- extract ---------------------------------------------------------------------
@pytest.mark.parametrize("name", corpus.image_names())
def test_extract_matches_manifest(name, scratch):
    dest = os.path.join(scratch, name)
    proc = tool("extract", name, dest)
    expected = corpus.manifest(name)["entries"]
    try:
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == "" and proc.stdout == b""
        actual = describe_path(dest)
        # files that hold nothing but zeros take no space: holes are kept
        for path, e in expected.items():
            zeros = e["type"] == "file" and e["sha256"] == hashlib.sha256(bytes(e["size"])).hexdigest()
            if zeros and e["size"] >= 4096:
                assert os.lstat(dest + path).st_blocks == 0, path
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    keys = [k for k in ALL_KEYS if k != "blocks"]
    problems = diff_trees(without_dir_sizes(expected), without_dir_sizes(actual), keys, sorted_entries=True)
    assert not problems, "\n".join(problems)


def test_extract_subtree_and_single_file(scratch):
    entries = corpus.manifest("lz4hc-C32k-ztail-frag-dedupe")["entries"]
    dirs = [p for p, e in entries.items() if e["type"] == "dir" and p != "/"]
    top = max(dirs, key=lambda p: len(entries[p]["entries"]))
    dest = os.path.join(scratch, "subtree")
    os.mkdir(dest)  # an existing empty directory is filled in
    proc = tool("extract", "lz4hc-C32k-ztail-frag-dedupe", dest, top)
    assert proc.returncode == 0, proc.stderr
    expected = {("/" + p[len(top):].lstrip("/")): e for p, e in entries.items() if p == top or p.startswith(top + "/")}
    keys = [k for k in ALL_KEYS if k not in ("blocks", "ino")]
    problems = diff_trees(without_dir_sizes(expected), without_dir_sizes(describe_path(dest)), keys,
                          sorted_entries=True)
    assert not problems, "\n".join(problems)

    path = next(p for p in samples(entries) if entries[p]["type"] == "file")
    single = os.path.join(scratch, "single")
    assert tool("extract", "lz4hc-C32k-ztail-frag-dedupe", single, path).returncode == 0
    assert describe_path(single)["/"]["sha256"] == entries[path]["sha256"]
    again = tool("extract", "lz4hc-C32k-ztail-frag-dedupe", single, path)
    assert_one_error_line(again, corpus.image_path("lz4hc-C32k-ztail-frag-dedupe"), "File exists")
    shutil.rmtree(dest)
    os.unlink(single)


# -- fsck --------------------------------------------------------------------------
@pytest.mark.parametrize("name", corpus.image_names())
def test_fsck_passes_every_corpus_image(name):
    proc = tool("fsck", name)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    inodes = {e["ino"] for e in corpus.manifest(name)["entries"].values()}
    assert f" {len(inodes)} inodes, {corpus.manifest(name)['entry_count']} entries".encode() in proc.stdout


# -- info ----------------------------------------------------------------------------
def parse_fields(text: bytes) -> dict[str, str]:
    return dict(line.split(": ", 1) if ": " in line else (line.rstrip(":"), "") for line in text.decode().splitlines())


def mkfs_algorithms(args: list[str]) -> set[str]:
    """Compression algorithms named on the mkfs.erofs command line (``-zA:B,level``, ``-mSIZE:ALG``)."""
    names = set()
    for arg in args:
        if arg.startswith("-z"):
            names.update(part.split(",")[0] for part in arg[2:].split(":"))
        elif arg.startswith("-m") and ":" in arg:
            names.add(arg.split(":", 1)[1])
    return {"lz4" if n == "lz4hc" else n for n in names}


@pytest.mark.parametrize("name", corpus.image_names())
def test_info_matches_superblock(name):
    m = corpus.manifest(name)
    sb = m["superblock"]
    proc = tool("info", name)
    assert proc.returncode == 0, proc.stderr
    info = parse_fields(proc.stdout)
    assert int(info["block size"]) == sb["block_size"] == m["statfs"]["bsize"]
    assert info["uuid"] == sb["uuid"]
    assert info["volume name"] == sb["volume_name"]
    # the superblock's 16-bit root nid field is 0 when the 48-bit layout keeps the nid elsewhere; the kernel tells
    assert int(info["root nid"]) == int(m["kernel_messages"][-1].rsplit("nid ", 1)[1].rstrip("."))
    for key, field in [("inodes", "inodes"), ("fixed nsec", "fixed_nsec"), ("meta blkaddr", "meta_blkaddr"),
                       ("xattr blkaddr", "xattr_blkaddr"), ("packed nid", "packed_nid"),
                       ("xattr prefixes", "xattr_prefix_count"), ("devices", "extra_devices")]:
        assert int(info[key]) == sb[field], key
    assert int(info["metabox nid"]) == (sb["metabox_nid"] or 0)
    assert int(info["epoch"].split()[0]) == sb["epoch"]
    assert int(info["build time"].split()[0]) == sb["build_time"]
    assert int(info["checksum"], 16) == int(sb["checksum"], 16)
    assert int(info["total blocks"]) == m["statfs"]["blocks"]
    for key, raw, listed in [("compat features", sb["feature_compat"], m["features"]["compat"]),
                             ("incompat features", sb["feature_incompat"], m["features"]["incompat"])]:
        mask, *names = info[key].split()
        assert int(mask, 16) == raw
        assert set(listed) <= {part for n in names for part in n.split("/")}
    algorithms = mkfs_algorithms(m["mkfs_args"])
    assert set(info["compression"].split()) == (algorithms or {"none"})
    dictsize = re.search(r"dictsize=(\d+)", " ".join(m["mkfs_args"]))
    if dictsize:
        assert int(info["lzma dictionary size"]) == int(dictsize.group(1))
    if "lz4" in algorithms and not sb["feature_incompat"] & d.INCOMPAT_COMPR_CFGS:
        assert int(info["lz4 max distance"]) == sb["available_compr_algs_or_lz4_max_distance"]
    devices = [line for key, line in info.items() if key.startswith("device ")]
    assert len(devices) == sb["extra_devices"]
    assert all(("flat" in line) == (corpus.entry(name)["kind"] == "flat") for line in devices)
    device_blocks = [int(re.match(r"blocks (\d+),", line).group(1)) for line in devices]
    assert int(info["blocks"]) + sum(device_blocks) == m["statfs"]["blocks"]
    if corpus.entry(name)["kind"] != "flat":
        # a tar may end in padding that its device slot leaves out
        sizes = [m["file_sizes"][dev] for dev in m["devices"]]
        assert all(0 < blocks * sb["block_size"] <= size for blocks, size in zip(device_blocks, sizes, strict=True))


# -- ls, stat, cat, getfattr -------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLE_IMAGES)
def test_ls_names_in_readdir_order(name):
    entries = corpus.manifest(name)["entries"]
    for path in ["/", *{posixpath.dirname(p) for p in samples(entries)}]:
        proc = tool("ls", name, path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == b"".join(os.fsencode(n) + b"\n" for n in entries[path]["entries"]), path


LONG_LINE = re.compile(rb"^(\S{10}) +(\d+) +(\d+) +(\d+) +(\d+|\d+, +\d+) (\d{4,}-\d\d-\d\d \d\d:\d\d) (.*)$")


@pytest.mark.parametrize("name", SAMPLE_IMAGES)
def test_ls_long(name):
    entries = corpus.manifest(name)["entries"]
    for top in dict.fromkeys(posixpath.dirname(p) for p in samples(entries)):
        proc = tool("ls", name, top, "-l")  # options may follow the operands
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.split(b"\n")[:-1]
        names = entries[top]["entries"]
        assert len(lines) == len(names)  # no name in these directories holds a newline
        for line, child in zip(lines, names, strict=True):
            e = entries[posixpath.join(top, child)]
            mode, nlink, uid, gid, size, when, rest = LONG_LINE.match(line).groups()
            assert mode.decode() == stat.filemode(IFMT[e["type"]] | e["mode"])
            assert (int(nlink), int(uid), int(gid)) == (e["nlink"], e["uid"], e["gid"])
            rdev = e["rdev"]
            assert size.decode() == (f"{rdev['major']}, {rdev['minor']}" if rdev else str(e["size"])).rjust(len(size))
            mtime = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=e["mtime_ns"] // 1000)
            assert when.decode() == mtime.strftime("%Y-%m-%d %H:%M").rjust(16, "0")
            target = b" -> " + os.fsencode(e["target"]) if e["target"] is not None else b""
            assert rest == os.fsencode(child) + target


@pytest.mark.parametrize("name", SAMPLE_IMAGES)
def test_stat_fields(name):
    m = corpus.manifest(name)
    for path in samples(m["entries"]):
        e = m["entries"][path]
        proc = tool("stat", name, path)
        assert proc.returncode == 0, proc.stderr
        fields = {}
        for line in proc.stdout.split(b"\n")[:-1]:
            key, _, value = line.partition(b": ")
            fields[key.decode()] = value
        assert fields["path"] == os.fsencode(path)
        assert fields["type"].decode() == e["type"]
        assert fields["mode"].decode() == f"{e['mode']:04o} ({stat.filemode(IFMT[e['type']] | e['mode'])})"
        for key in ("size", "nlink", "uid", "gid"):
            assert int(fields[key]) == e[key], key
        assert int(fields["blocks"]) == e["blocks"]
        assert int(re.search(rb"\((-?\d+) ns\)", fields["mtime"]).group(1)) == e["mtime_ns"]
        assert int(fields["xattrs"]) == len(e["xattrs"])
        assert fields.get("target") == (os.fsencode(e["target"]) if e["target"] is not None else None)
        assert fields.get("rdev") == ("{major},{minor}".format(**e["rdev"]).encode() if e["rdev"] else None)
        if not m["superblock"]["metabox_nid"]:  # the kernel numbers inodes by nid, except in a metabox
            assert int(fields["nid"]) == e["ino"]


@pytest.mark.parametrize("name", SAMPLE_IMAGES)
def test_cat_content(name):
    entries = corpus.manifest(name)["entries"]
    files = [p for p in samples(entries) if entries[p]["type"] == "file"]
    files += [p for p, e in entries.items() if e["type"] == "file" and e["size"] % 4096 in (0, 1, 4095)][:5]
    for path in files:
        proc = tool("cat", name, path)
        assert proc.returncode == 0, proc.stderr
        assert hashlib.sha256(proc.stdout).hexdigest() == entries[path]["sha256"], path


def test_cat_follows_symlinks_and_refuses_others():
    entries = corpus.manifest("plain")["entries"]
    link, target = next((p, t) for p, e in entries.items() if e["type"] == "symlink"
                        for t in [posixpath.normpath(posixpath.join(posixpath.dirname(p), e["target"]))]
                        if entries.get(t, {}).get("type") == "file" and entries[t]["size"])
    proc = tool("cat", "plain", link)
    assert proc.returncode == 0 and hashlib.sha256(proc.stdout).hexdigest() == entries[target]["sha256"]
    image = corpus.image_path("plain")
    assert_one_error_line(tool("cat", "plain", "/"), image, "is a directory")
    fifo = next(p for p, e in entries.items() if e["type"] == "fifo")
    assert_one_error_line(tool("cat", "plain", fifo), image, "not a regular file")
    assert_one_error_line(tool("cat", "plain", "/no/such/file"), image, "no such file")


@pytest.mark.parametrize("name", SAMPLE_IMAGES)
def test_getfattr(name):
    entries = corpus.manifest(name)["entries"]
    with_xattrs = [p for p, e in entries.items() if e["xattrs"]]
    paths = [*samples(entries), *with_xattrs[:: max(1, len(with_xattrs) // 8)]]
    for path in dict.fromkeys(paths):
        proc = tool("getfattr", name, path)
        assert proc.returncode == 0, proc.stderr
        expected = entries[path]["xattrs"]
        if not expected:
            assert proc.stdout == b""
            continue
        header, *lines, blank, end = proc.stdout.split(b"\n")
        assert header == b"# file: " + os.fsencode(path) and blank == end == b""
        shown = dict(line.rsplit(b"=0x", 1) for line in lines)
        assert shown == {os.fsencode(k): v.encode() for k, v in expected.items()}, path


# -- options and errors ------------------------------------------------------------------
def test_offset_reads_an_embedded_image(scratch):
    name = "fsmeta-flat"
    prefix = os.urandom(12345)
    path = os.path.join(scratch, "embedded.img")
    with open(path, "wb") as out, open(corpus.image_path(name), "rb") as src:
        out.write(prefix)
        shutil.copyfileobj(src, out)
    entries = corpus.manifest(name)["entries"]
    proc = run_tool("ls", "--offset", str(len(prefix)), path, "/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"".join(os.fsencode(n) + b"\n" for n in entries["/"]["entries"])
    assert run_tool("fsck", "--offset", hex(len(prefix)), path).returncode == 0
    assert_one_error_line(run_tool("info", path), path, "bad magic", "--offset")
    os.unlink(path)


@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate", "x.erofs"],
    ["ls"],
    ["cat", "IMAGE"],
    ["extract", "IMAGE"],
    ["info", "--offset", "-1", "IMAGE"],
    ["info", "--offset", "lots", "IMAGE"],
    ["info", "IMAGE", "surplus"],
    ["ls", "--bogus", "IMAGE"],
])
def test_usage_errors_exit_2(argv):
    proc = run_tool(*[corpus.image_path("plain") if a == "IMAGE" else a for a in argv])
    assert proc.returncode == 2, proc.stderr
    assert "usage:" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_image_is_one_line(tmp_path):
    missing = tmp_path / "missing.erofs"
    assert_one_error_line(run_tool("info", missing), missing, "cannot open", "No such file")


def test_unexpected_errors_are_one_line(monkeypatch, capsys):
    def broken(img, args):
        raise KeyError("a bug")

    monkeypatch.setattr(tool_module, "cmd_info", broken)
    image = corpus.image_path("plain")
    assert tool_module.main(["info", image]) == 1
    err = capsys.readouterr().err
    assert err == f"erofstool: {image}: internal error: KeyError: 'a bug' (run with --debug for details)\n"
    assert tool_module.main(["info", "--debug", image]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith(f"erofstool: {image}: internal error: KeyError: 'a bug'\n")


def test_progress_draws_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    shown, hidden = Terminal(), io.StringIO()
    for stream in (shown, hidden):
        with Progress("checking", 200, stream, interval=0) as bar:
            bar.advance(100)
            bar.message("a problem")
            bar.advance()
    assert hidden.getvalue() == "a problem\n"
    text = shown.getvalue()
    assert "checking [" in text and " 50% 100/200" in text and " 50% 101/200" in text
    assert "\r\x1b[Ka problem\n" in text and text.endswith("\r\x1b[K")


@pytest.mark.parametrize("module", ["erofsfuse.cli.tool", "erofsfuse.cli.mount", "snapshotter.main"])
def test_version_is_the_installed_distributions(module):
    proc = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.split()[-1] == importlib.metadata.version("erofsfuse")
