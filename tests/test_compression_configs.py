"""Compression configuration records read as the kernel reads them.

Each case patches one field of a corpus image's configuration record (the
record is found with the library's own record walker) and asks the kernel
first: a value the kernel mounts must read exactly as the kernel shows it,
through the library and through FUSE; a value the kernel refuses must be
refused by the library, ``erofstool`` and ``erofsfuse`` with a clear error.
"""

from __future__ import annotations

import struct
import subprocess

import pytest

from erofsfuse.erofs import ondisk as d
from erofsfuse.erofs.devices import BackingFile
from erofsfuse.erofs.errors import UnsupportedFeature
from erofsfuse.erofs.image import ErofsImage
from erofsfuse.erofs.superblock import compression_records, parse_superblock

from .cli import assert_one_error_line, run_tool
from .damage import copy_image, patch, reseal_superblock
from .fusemount import erofsfuse_command, fuse_mount, is_mounted, unmount
from .kernel import erofs_mount
from .trees import describe_image, describe_path, diff_trees

# (algorithm, struct format of the field, its offset in the record)
DEFLATE_WINDOWBITS = (d.COMPRESSION_DEFLATE, "<B", 0)
LZMA_DICT_SIZE = (d.COMPRESSION_LZMA, "<I", 0)
ZSTD_WINDOWLOG = (d.COMPRESSION_ZSTD, "<B", 1)
LZ4_MAX_PCLUSTERBLKS = (d.COMPRESSION_LZ4, "<H", 2)


def set_config_field(path: str, field: tuple[int, str, int], value: int) -> None:
    """Store ``value`` in one field of the image's configuration record for the field's algorithm."""
    algorithm, fmt, offset = field
    primary = BackingFile(path)
    try:
        sb = parse_superblock(primary)
        records = {alg: pos for alg, pos, _ in compression_records(sb, primary)}
    finally:
        primary.close()
    patch(path, records[algorithm] + offset, struct.pack(fmt, value))
    reseal_superblock(path)


def kernel_mounts(path: str) -> bool:
    try:
        with erofs_mount(path):
            return True
    except OSError:
        return False


# libdeflate's mkfs.erofs backend stores 0; the kernel inflates with its full window whatever the field says
@pytest.mark.parametrize(("name", "windowbits"), [("deflate", 0), ("deflate-C64k-ztail", 0), ("deflate", 9)])
def test_deflate_window_fields_the_kernel_accepts_read_like_the_kernel(name, windowbits, tmp_path):
    path = copy_image(name, tmp_path)
    set_config_field(path, DEFLATE_WINDOWBITS, windowbits)
    with erofs_mount(path) as mnt:
        expected = describe_path(mnt)
    with ErofsImage(path) as img:
        assert img.sb.compression.deflate_windowbits == windowbits
        assert not diff_trees(expected, describe_image(img))
    with fuse_mount(path) as mnt:
        assert not diff_trees(expected, describe_path(mnt))
    extracted = tmp_path / "extracted"
    proc = run_tool("extract", path, extracted)
    assert proc.returncode == 0, proc.stderr
    assert not diff_trees(expected, describe_path(str(extracted)), keys=("type", "sha256", "target"))
    assert run_tool("fsck", path).returncode == 0


@pytest.mark.parametrize(
    ("name", "field", "value", "needle"),
    [
        ("deflate", DEFLATE_WINDOWBITS, d.DEFLATE_MAX_WINDOWBITS + 1, "deflate window"),
        ("lzma", LZMA_DICT_SIZE, d.LZMA_MIN_DICT_SIZE // 2, "lzma dictionary"),
        ("lzma", LZMA_DICT_SIZE, d.LZMA_MAX_DICT_SIZE + 1, "lzma dictionary"),
        ("zstd", ZSTD_WINDOWLOG, d.ZSTD_MAX_WINDOWLOG + 1, "zstd window"),
        ("lz4hc-C64k-ztailpacking", LZ4_MAX_PCLUSTERBLKS, d.PCLUSTER_MAX_SIZE // 4096 + 1, "lz4 pclusters"),
    ],
    ids=["deflate-window", "lzma-small-dict", "lzma-large-dict", "zstd-window", "lz4-pcluster"],
)
def test_config_values_the_kernel_refuses_are_refused(name, field, value, needle, tmp_path):
    path = copy_image(name, tmp_path)
    set_config_field(path, field, value)
    assert not kernel_mounts(path)
    with pytest.raises(UnsupportedFeature, match=needle):
        ErofsImage(path)
    for command in (("fsck", path), ("extract", path, tmp_path / "extracted")):
        assert_one_error_line(run_tool(*command), path, needle)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(erofsfuse_command(path, str(mnt)), capture_output=True, text=True, timeout=60)
    if is_mounted(str(mnt)):
        unmount(str(mnt))
        pytest.fail("erofsfuse mounted an image the kernel refuses")
    assert proc.returncode == 1 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_values_at_the_kernels_limits_are_accepted(tmp_path):
    """The largest window and pcluster the kernel takes still mount, in the library as in the kernel."""
    cases = [
        ("deflate", DEFLATE_WINDOWBITS, d.DEFLATE_MAX_WINDOWBITS),
        ("zstd", ZSTD_WINDOWLOG, d.ZSTD_MAX_WINDOWLOG),
        ("lzma", LZMA_DICT_SIZE, d.LZMA_MAX_DICT_SIZE),
        ("lz4hc-C64k-ztailpacking", LZ4_MAX_PCLUSTERBLKS, d.PCLUSTER_MAX_SIZE // 4096),
    ]
    for name, field, value in cases:
        path = copy_image(name, tmp_path)
        set_config_field(path, field, value)
        assert kernel_mounts(path), name
        with erofs_mount(path) as mnt, ErofsImage(path) as img:
            assert not diff_trees(describe_path(mnt), describe_image(img)), name
