"""Opening an image: whatever step fails, every file the attempt opened is closed again."""

from __future__ import annotations

import os
import struct

import pytest

from erofsfuse.erofs import CorruptImage, DeviceError, ErofsImage

from . import corpus
from .damage import copy_image, patch, reseal_superblock, superblock_offset


def open_files() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def image_with_a_file_as_root(tmp_path) -> str:
    """A copy of an image whose superblock names a regular file as the root directory."""
    path = copy_image("plain", tmp_path)
    with ErofsImage(path) as img:
        nid = next(ino.nid for _, ino in img.walk() if ino.is_reg and ino.nid < 1 << 16)
    patch(path, superblock_offset("rootnid_2b"), struct.pack("<H", nid))
    reseal_superblock(path)
    return path


@pytest.mark.parametrize(("case", "error", "needle"), [
    ("root is a file", CorruptImage, "root inode is not a directory"),
    ("second device missing", DeviceError, "cannot open"),
    ("devices miscounted", DeviceError, "extra device(s) but"),
])
def test_a_failed_open_leaves_no_file_open(tmp_path, case, error, needle):
    blob = corpus.device_paths("blobdev")[0]
    image, devices = {
        "root is a file": (image_with_a_file_as_root(tmp_path), []),
        "second device missing": (corpus.image_path("blobdev"), [blob, str(tmp_path / "gone.blob")]),
        "devices miscounted": (corpus.image_path("blobdev"), [blob, blob]),
    }[case]
    before = open_files()
    with pytest.raises(error) as caught:
        ErofsImage(image, devices)
    assert needle in str(caught.value)
    assert open_files() == before
