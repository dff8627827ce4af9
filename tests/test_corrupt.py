"""Hand-corrupted images: the library raises a typed error that names the problem, erofstool exits 1 with
one clear line per problem, and nothing hangs or prints a traceback.

Every corruption is placed by decoding the image with the library (superblock
fields, inode positions, dirents, chunk indexes, pcluster addresses), never
at an offset typed in.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess

import pytest

from erofsfuse.cli.fsck import check
from erofsfuse.erofs import ondisk as d
from erofsfuse.erofs.data import Placement
from erofsfuse.erofs.errors import CorruptImage, DeviceError, ErofsError, UnsupportedFeature
from erofsfuse.erofs.image import ErofsImage
from erofsfuse.fuse.tree import ImageTree

from . import corpus
from .cli import assert_one_error_line, deadline, device_args, run_tool
from .damage import (
    copy_image,
    file_position,
    find_dirent,
    largest_pcluster,
    patch,
    read_at,
    reseal_superblock,
    rewrite_dirent,
    superblock_field,
    superblock_offset,
)
from .fusemount import fuse_mount
from .kernel import erofs_mount
from .rawlist import in_new_process

LIBRARY_SECONDS = 20
TOOL_SECONDS = 60


# -- the checks every case makes -----------------------------------------------------------
def expect_library_error(kind: type[ErofsError], needles, action) -> ErofsError:
    with deadline(LIBRARY_SECONDS), pytest.raises(kind) as caught:
        action()
    for needle in needles:
        assert needle in str(caught.value), (needle, str(caught.value))
    return caught.value


def expect_tool_failure(image: str, needles, devices=(), *, fsck_path: str | None = None, extract_needles=None,
                        tmp_path=None):
    """``fsck`` and ``extract`` exit 1; ``fsck`` names every problem (with ``fsck_path`` among them), one a line."""
    fsck = run_tool("fsck", *device_args(devices), image, timeout=TOOL_SECONDS)
    assert fsck.returncode == 1, fsck.stderr
    assert "Traceback" not in fsck.stderr and fsck.stdout == b""
    lines = fsck.stderr.splitlines()
    assert lines and all(line.startswith(f"erofstool: {image}: ") for line in lines), fsck.stderr
    if fsck_path is None:
        assert_one_error_line(fsck, image, *needles)
    else:
        assert lines[-1].endswith("problem(s) found")
        named = [line for line in lines if f": {fsck_path}: " in line]
        assert named, fsck.stderr
        assert all(needle in named[0] for needle in needles), named[0]
    dest = tmp_path / "extracted"
    extract = run_tool("extract", *device_args(devices), image, dest, timeout=TOOL_SECONDS)
    assert_one_error_line(extract, image, *(needles if extract_needles is None else extract_needles))
    shutil.rmtree(dest, ignore_errors=True)


# -- superblock and devices ------------------------------------------------------------------
def test_bad_magic(tmp_path):
    path = copy_image("plain", tmp_path)
    offset = superblock_offset("magic")
    patch(path, offset, bytes(b ^ 0xFF for b in read_at(path, offset, 4)))
    expect_library_error(CorruptImage, ["bad magic"], lambda: ErofsImage(path))
    expect_tool_failure(path, ["bad magic"], tmp_path=tmp_path)


def test_bad_superblock_checksum(tmp_path):
    path = copy_image("plain", tmp_path)
    with ErofsImage(path) as img:
        assert img.sb.compat(d.COMPAT_SB_CHKSUM)
    patch(path, superblock_offset("volume_name"), b"tampered")
    expect_library_error(CorruptImage, ["checksum mismatch"], lambda: ErofsImage(path))
    expect_tool_failure(path, ["checksum mismatch"], tmp_path=tmp_path)


def test_unknown_incompat_feature(tmp_path):
    path = copy_image("lz4", tmp_path)
    unknown = d.INCOMPAT_ALL + 1
    incompat = superblock_field(path, "feature_incompat")
    patch(path, superblock_offset("feature_incompat"), struct.pack("<I", incompat | unknown))
    reseal_superblock(path)
    expect_library_error(UnsupportedFeature, ["unknown incompatible feature", hex(unknown)], lambda: ErofsImage(path))
    expect_tool_failure(path, ["unknown incompatible feature", hex(unknown)], tmp_path=tmp_path)


@pytest.mark.parametrize(("name", "count"), [("blobdev", 2), ("fsmeta", 2), ("fsmeta", 4)])
def test_wrong_number_of_devices(name, count, tmp_path):
    devices = corpus.device_paths(name)
    given = (devices * count)[:count]  # none at all would be the flat layout, which is legal
    needles = [f"{len(devices)} extra device(s) but {len(given)} were given"]
    expect_library_error(DeviceError, needles, lambda: ErofsImage(corpus.image_path(name), given))
    expect_tool_failure(corpus.image_path(name), needles, given, tmp_path=tmp_path)


# -- data -----------------------------------------------------------------------------------------
def test_truncated_image(tmp_path):
    path = copy_image("plain-noinline", tmp_path)
    with ErofsImage(path) as img:
        metadata_end, last = 0, None
        for name, ino in img.walk():
            metadata_end = max(metadata_end, ino.iloc + ino.isize + ino.xattr_isize)
            if ino.is_dir:
                metadata_end = max(metadata_end, file_position(img, ino, ino.size - 1) + 1)
            elif ino.is_reg and ino.size and img.extent_at(ino, 0).placement is Placement.DEVICE:
                start = file_position(img, ino, 0)
                if last is None or start > last[0]:
                    last = (start, name, ino.nid, ino.size)
    start, victim, nid, size = last
    assert start > metadata_end  # cutting into the last file's data leaves all metadata readable
    os.truncate(path, start + size // 2)
    with ErofsImage(path) as img:
        ino = img.resolve(victim)
        error = expect_library_error(CorruptImage, ["past the end"], lambda: img.read(ino, 0, size))
        assert error.nid == nid
    expect_tool_failure(path, ["past the end", f"nid {nid}"], fsck_path=victim.decode(), tmp_path=tmp_path)


def test_a_directory_cut_short_lists_the_blocks_before_the_cut(tmp_path):
    path = copy_image("plain-noinline", tmp_path)
    with ErofsImage(path) as img:
        ino = img.resolve(b"/bigdir")
        block = img.sb.block_size
        kept = ino.size // block // 2  # a listing reads the directory ahead: the cut falls inside one read
        cut = file_position(img, ino, kept * block)
        assert cut == file_position(img, ino, 0) + kept * block and ino.iloc + ino.isize <= cut
        before_cut = [entry.name for entry in img.dirents(ino) if entry.offset < kept * block]
    os.truncate(path, cut + block // 2)
    with ErofsImage(path) as img:
        tree = ImageTree(img)
        node = tree.node(ino.nid)
        listed = []

        def list_all():
            for name, *_ in tree.listing(node, 0):
                listed.append(name)

        error = expect_library_error(CorruptImage, ["past the end"], list_all)
    assert error.nid == ino.nid
    assert listed == before_cut


@pytest.mark.parametrize("name", ["chunk-64k-indexes", "blobdev"])
def test_chunk_index_past_the_device_end(name, tmp_path):
    path = copy_image(name, tmp_path)
    devices = corpus.device_paths(name)
    with ErofsImage(path, devices) as img:
        victim, ino = next((p, i) for p, i in img.walk() if i.layout == d.LAYOUT_CHUNK_BASED and i.size
                           and i.chunkformat & d.CHUNK_FORMAT_INDEXES
                           and img.extent_at(i, 0).placement is Placement.DEVICE)
        ext = img.extent_at(ino, 0)
        pos = d.round_up(ino.data_start, d.CHUNK_INDEX.size)  # the first chunk index follows the inode
        hi, device_id, lo = d.CHUNK_INDEX.unpack(read_at(path, pos, d.CHUNK_INDEX.size))
        assert (hi << 32 | lo) << img.sb.blkszbits == ext.pa and device_id == ext.device_id
        device, _ = img.devices.locate(ext.pa, ext.device_id)
        beyond = (device.size >> img.sb.blkszbits) + 1000
    patch(path, pos, d.CHUNK_INDEX.pack(0, device_id, beyond))
    reseal_superblock(path)
    with ErofsImage(path, devices) as img:
        ino = img.resolve(victim)
        error = expect_library_error(CorruptImage, ["past the end"], lambda: img.read(ino, 0, ino.size))
        assert error.nid == ino.nid
    expect_tool_failure(path, ["past the end"], devices, fsck_path=victim.decode(), tmp_path=tmp_path)


@pytest.mark.parametrize("name", ["lz4", "lz4hc-C64k-ztailpacking", "lzma", "deflate", "zstd"])
def test_corrupt_compressed_stream(name, tmp_path):
    path = copy_image(name, tmp_path)
    with ErofsImage(path) as img:
        victim, ino, (la, llen, pa, plen, _, _) = largest_pcluster(img, lambda ext: ext.algorithm < d.COMPRESSION_MAX)
    nid = ino.nid
    patch(path, pa, b"\xff" * plen)
    with ErofsImage(path) as img:
        ino = img.inode(nid)
        error = expect_library_error(CorruptImage, ["corrupt", f"pcluster at {pa}"], lambda: img.read(ino, la, llen))
        assert error.nid == nid
    # extraction stops at the first file that uses the pcluster, which need not be the one picked
    expect_tool_failure(path, ["corrupt", f"nid {nid}"], fsck_path=victim.decode(), extract_needles=["corrupt"],
                        tmp_path=tmp_path)


# -- directories ------------------------------------------------------------------------------------
def test_dirent_nid_beyond_the_image(tmp_path):
    path = copy_image("plain", tmp_path)
    with ErofsImage(path) as img:
        dir_path, dir_ino, entries, i = find_dirent(img, lambda img, es, i: es[i].file_type == d.FT_REG_FILE)
        beyond = (img.devices.primary.size >> d.ISLOT_BITS) + 1000
        rewrite_dirent(path, img, dir_ino, entries[i], nid=beyond)
    child = dir_path.rstrip(b"/") + b"/" + entries[i].name
    with ErofsImage(path) as img:
        error = expect_library_error(CorruptImage, ["past the end", f"nid {beyond}"], lambda: img.resolve(child))
        assert error.nid == beyond
        expect_library_error(CorruptImage, [f"nid {beyond}"], lambda: list(img.walk()))
    expect_tool_failure(path, ["past the end", f"nid {beyond}"], fsck_path=child.decode(), tmp_path=tmp_path)


def test_listings_show_dirents_of_impossible_inodes_as_the_kernel_does(tmp_path):
    """A names-only listing reads no inode: the kernel lists a dirent whose nid is past the end, so do we; a nid
    that cannot be an inode number at all fails the listing with EIO and a log line naming the directory."""
    path = copy_image("plain", tmp_path)
    with ErofsImage(path) as img:
        dir_path, dir_ino, entries, i = find_dirent(img, lambda img, es, i: es[i].file_type == d.FT_REG_FILE)
        rewrite_dirent(path, img, dir_ino, entries[i], nid=(img.devices.primary.size >> d.ISLOT_BITS) + 1000)
    directory = dir_path.decode()
    with erofs_mount(path) as kmnt:
        kernel = in_new_process(f"list:{kmnt}{directory}")[f"{kmnt}{directory}"]
    with fuse_mount(path) as mnt:
        ours = in_new_process(f"list:{mnt}{directory}")[f"{mnt}{directory}"]
        with pytest.raises(OSError) as info:
            os.lstat(f"{mnt}{directory}/{entries[i].name.decode()}")
        assert info.value.errno == errno.EIO
    assert [e[:2] for e in ours] == [e[:2] for e in kernel]

    with ErofsImage(path) as img:
        rewrite_dirent(path, img, dir_ino, img.dirent_block(dir_ino, 0)[i], nid=(1 << 64) - 1)
    log = tmp_path / "daemon.log"
    with fuse_mount(path, options=[f"log={log}"]) as mnt, pytest.raises(subprocess.CalledProcessError) as failed:
        in_new_process(f"list:{mnt}{directory}")
    assert f"[Errno {errno.EIO}]".encode() in failed.value.stderr
    assert f"nid {dir_ino.nid}" in log.read_text() and "cannot be an inode number" in log.read_text()
    assert "Traceback" not in log.read_text()


def test_dirent_name_offsets_out_of_order(tmp_path):
    path = copy_image("plain", tmp_path)
    with ErofsImage(path) as img:
        dir_path, dir_ino, entries, i = find_dirent(img, lambda img, es, i: i == 2 and len(es) > 4)
        pos = file_position(img, dir_ino, entries[i].offset)
        (_, nameoff, _) = d.DIRENT.unpack(read_at(path, pos, d.DIRENT.size))
        rewrite_dirent(path, img, dir_ino, entries[i + 1], nameoff=nameoff - 1)
    needles = ["name offsets out of order", f"nid {dir_ino.nid}"]
    with ErofsImage(path) as img:
        ino = img.resolve(dir_path)
        error = expect_library_error(CorruptImage, needles, lambda: img.listdir(ino))
        assert error.nid == dir_ino.nid
    expect_tool_failure(path, needles, fsck_path=dir_path.decode(), tmp_path=tmp_path)


def test_directory_containing_itself(tmp_path):
    path = copy_image("plain", tmp_path)
    with ErofsImage(path) as img:
        dir_path, dir_ino, entries, i = find_dirent(
            img, lambda img, es, i: es[i].file_type == d.FT_DIR and es[i].name not in (b".", b".."))
        rewrite_dirent(path, img, dir_ino, entries[i], nid=dir_ino.nid)
    child = dir_path.rstrip(b"/") + b"/" + entries[i].name
    with ErofsImage(path) as img:
        expect_library_error(CorruptImage, ["directory loop"], lambda: list(img.walk()))
        report = check(img)
        assert [(p.path, p.nid) for p in report.problems] == [(child, dir_ino.nid)]
    expect_tool_failure(path, ["directory loop"], fsck_path=child.decode(), tmp_path=tmp_path)
