"""The mount table parser against mounts the test makes: escaped paths and sources, devices, options."""

from __future__ import annotations

import os

from erofsfuse.host.mountinfo import mount_table

from .kernel import MS_RDONLY, mount, umount


def test_escaped_target_and_source_come_back_as_mounted(tmp_path):
    target = tmp_path / "a b\tc\\d\ne"
    target.mkdir()
    source = "source with\tspaces\\"
    mount(source, str(target), "tmpfs", MS_RDONLY, "size=1m")
    try:
        st = os.stat(target)
        (found,) = [m for m in mount_table() if m.target == target]
        assert found.source == source
        assert found.fstype == "tmpfs"
        assert found.device == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        assert "ro" in found.options and "size=1024k" in found.super_options
        mount("again", str(target), "tmpfs")  # a second mount on the same point comes later in the table
        try:
            ids = [m.mount_id for m in mount_table() if m.target == target]
            assert len(ids) == 2 and ids[0] == found.mount_id and ids[1] != found.mount_id
        finally:
            umount(str(target))
    finally:
        umount(str(target))
