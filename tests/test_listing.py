"""Directory listings: names-only entries for callers that only want names, attributes for those that stat."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path

import pytest

from erofsfuse.fuse import direntplus
from erofsfuse.fuse.listing import ListingAdvisor, thread_group

from . import corpus
from .fusemount import fuse_mount, traced_mount
from .kernel import erofs_mount, overlay_mount
from .rawlist import in_new_process

IMAGES = ["plain", "dot-omitted", "plain-b512", "lz4hc-C32k-ztail-frag-dedupe", "tar-index", "fsmeta-flat",
          "metabox-lz4hc", "layer2"]


def relative(listings: dict[str, list], root: str) -> dict[str, list]:
    return {os.path.relpath(path, root): entries for path, entries in listings.items()}


# -- the listings themselves, against the kernel ------------------------------------------
def test_this_pyfuse3_can_list_names_only():
    """The pinned pyfuse3 keeps the node id where direntplus finds it: names-only listings are on."""
    assert direntplus.names_only is not None
    entry = direntplus.names_only(12345, 0o100000)
    assert (entry.st_ino, entry.st_mode) == (0, 0o100000)  # st_ino reads the node id back


@pytest.mark.parametrize("name", IMAGES)
def test_names_only_listings_show_what_the_kernel_shows(name):
    """Names, order and d_type as the kernel's own mount lists them; d_ino as lstat shows the same file."""
    image, devices = corpus.image_path(name), corpus.device_paths(name)
    with fuse_mount(image, devices) as mnt:
        ours = relative(in_new_process(f"walk:{mnt}"), mnt)
        for directory, entries in ours.items():
            for entry_name, _, d_ino in entries:
                if not (directory == "." and entry_name == ".."):  # the mount root's parent is outside
                    assert os.lstat(os.path.join(mnt, directory, entry_name)).st_ino == d_ino, (directory, entry_name)
    with erofs_mount(image, devices) as kmnt:
        kernel = relative(in_new_process(f"walk:{kmnt}"), kmnt)
    _same_names_and_types(ours, kernel)


def test_names_only_listings_of_a_stack_show_what_overlayfs_shows(tmp_path):
    names = ["layer1", "layer2", "layer3"]
    with fuse_mount(corpus.stack_file(tmp_path, names)) as mnt:
        ours = relative(in_new_process(f"walk:{mnt}"), mnt)
    with contextlib.ExitStack() as stack:
        lowers = [stack.enter_context(erofs_mount(corpus.image_path(n), corpus.device_paths(n))) for n in names]
        merged = stack.enter_context(overlay_mount(lowers))
        kernel = relative(in_new_process(f"walk:{merged}"), merged)
    _same_names_and_types(ours, kernel)


def _same_names_and_types(ours: dict[str, list], kernel: dict[str, list]) -> None:
    assert ours.keys() == kernel.keys()
    for directory, entries in kernel.items():
        assert [e[:2] for e in ours[directory]] == [e[:2] for e in entries], directory


# -- who gets which, seen from the requests the daemon receives ----------------------------
def _directories_with_files(name: str, count: int) -> list[tuple[str, str]]:
    """``count`` directories of the image that hold a regular file, each with one such file."""
    entries = corpus.manifest(name)["entries"]
    found = []
    for path, entry in entries.items():
        if entry["type"] == "dir":
            files = [c for c in entry["entries"] if entries[path.rstrip("/") + "/" + c]["type"] == "file"]
            if files:
                found.append((path, files[0]))
    assert len(found) >= count
    return found[:count]


def _looked_up(log: Path, directory: str, name: str) -> bool:
    """Whether the daemon received a LOOKUP of ``name`` in ``directory``."""
    parent = os.lstat(directory).st_ino
    return re.search(rf"DEBUG lookup\({parent}, {re.escape(repr(name.encode()))},", log.read_text()) is not None


def test_a_caller_that_stats_what_it_listed_gets_attributes_from_then_on(tmp_path):
    log = tmp_path / "requests.log"
    (d1, f1), (d2, f2), (d3, f3) = _directories_with_files("plain", 3)
    with traced_mount(corpus.image_path("plain"), str(log)) as mnt:
        # a new caller gets names only: the kernel keeps no entry, so a later stat must look the file up
        in_new_process(f"list:{mnt}{d1}")
        os.lstat(f"{mnt}{d1}/{f1}")
        assert _looked_up(log, mnt + d1, f1)
        # one that stats a file it just listed gets attributes with its next listing: no lookup needed
        in_new_process(f"list:{mnt}{d2}", f"lstat:{mnt}{d2}/{f2}", f"list:{mnt}{d3}", f"lstat:{mnt}{d3}/{f3}")
        assert _looked_up(log, mnt + d2, f2)
        assert not _looked_up(log, mnt + d3, f3)


# -- the advisor's rules ---------------------------------------------------------------------
def test_advisor_rules():
    process = {11: 10, 12: 10, 20: 20}  # threads 11 and 12 belong to process 10
    advisor = ListingAdvisor(process.__getitem__)
    advisor.opened(1, 11)
    assert not advisor.with_attributes(1)
    advisor.looked_up(1, 12, is_dir=True)  # descending into a subdirectory: still names only
    advisor.looked_up(2, 12, is_dir=False)  # a file in a directory it did not list: still names only
    assert not advisor.with_attributes(1)
    advisor.opened(3, 20)
    assert not advisor.with_attributes(3)
    advisor.looked_up(1, 12, is_dir=False)  # another thread of process 10 stats a listed file
    advisor.opened(4, 11)
    assert advisor.with_attributes(4)
    assert not advisor.with_attributes(3)  # process 20 is not affected
    advisor.opened(5, 0)  # the kernel does not name the caller
    assert advisor.with_attributes(5)
    advisor.closed(3)
    assert advisor.with_attributes(3)  # no opener known (a handle from before a restart): attributes


def test_thread_group_of_a_thread_is_its_process():
    seen = []
    worker = threading.Thread(target=lambda: seen.append(thread_group(threading.get_native_id())))
    worker.start()
    worker.join()
    assert seen == [os.getpid()]
    assert thread_group(os.getpid()) == os.getpid()
    assert thread_group(2**22 + 12345) == 2**22 + 12345  # above any pid_max, no such thread: itself
