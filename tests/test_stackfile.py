"""Stack files: what the snapshotter writes is what the FUSE server serves, as the README documents them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from erofsfuse.erofs import DeviceError
from erofsfuse.fuse.source import open_tree
from erofsfuse.fuse.stackfile import StackFile, StackFileError, StackLayer
from erofsfuse.fuse.tree import Node, Tree
from snapshotter.layout import Layout
from snapshotter.planner import stack_document

from . import corpus
from .fusemount import erofsfuse_command


def served(tree: Tree) -> dict[bytes, tuple]:
    """Every path the tree serves, with what ``lstat`` shows of it and its contents."""
    found: dict[bytes, tuple] = {}

    def visit(path: bytes, node: Node) -> None:
        st = tree.stat(node)
        data = tree.read(node, 0, st.st_size) if node.inode.is_reg else None
        found[path] = (st, data, tree.xattrs(node))
        if node.inode.is_dir:
            for name, child, _ in tree.entries(node, 0):
                if name not in (b".", b".."):
                    visit(path + b"/" + name, child)

    visit(b"", tree.root)
    tree.close()
    return found


def test_the_snapshotter_stack_file_serves_its_chain(tmp_path):
    """The stack file of a chain (nearest parent first) serves what a hand-written one of its layers serves."""
    layout = Layout(tmp_path / "root")
    chain = {7: "layer3", 3: "layer2", 1: "layer1"}  # snapshot id -> its committed layer, nearest first
    for snapshot_id, name in chain.items():
        layout.blob(snapshot_id).parent.mkdir(parents=True)
        os.symlink(corpus.image_path(name), layout.blob(snapshot_id))
    written = tmp_path / "stack.json"
    written.write_text(json.dumps(stack_document(list(chain), layout), indent=1))
    tree = open_tree(str(written))
    assert [img.path for img in tree.images()] == [str(layout.blob(i)) for i in reversed(chain)]
    by_hand = corpus.stack_file(tmp_path, list(reversed(chain.values())))
    assert served(tree) == served(open_tree(by_hand))


def test_relative_paths_devices_offsets_and_other_keys(tmp_path):
    """Paths are relative to the stack file, ``offset`` finds an image inside a larger file, unknown keys are
    ignored: the stack serves what the same layers named by absolute path serve."""
    here = tmp_path / "here"
    (here / "blobs").mkdir(parents=True)
    offset = 8192
    with open(here / "plain.bin", "wb") as f:
        f.write(os.urandom(offset))
        with open(corpus.image_path("plain"), "rb") as image:
            shutil.copyfileobj(image, f)
    shutil.copy(corpus.image_path("blobdev"), here / "blobdev.erofs")
    for device in corpus.device_paths("blobdev"):
        shutil.copy(device, here / "blobs" / os.path.basename(device))
    doc = {"comment": "two layers", "layers": [
        {"image": "plain.bin", "offset": offset, "note": "prefixed"},
        {"image": "blobdev.erofs", "devices": [f"blobs/{os.path.basename(d)}" for d in corpus.device_paths("blobdev")]},
    ]}
    (here / "stack.json").write_text(json.dumps(doc))
    by_absolute_paths = corpus.stack_file(tmp_path, ["plain", "blobdev"])
    assert served(open_tree(str(here / "stack.json"))) == served(open_tree(by_absolute_paths))


def test_a_stack_reads_back_as_written(tmp_path):
    stack = StackFile((StackLayer("/l/base.erofs", xattrs=False),
                       StackLayer("/l/app.erofs", ("/l/app.tar",), 4096, xattrs=True), StackLayer("/l/top.erofs")))
    (tmp_path / "stack.json").write_text(json.dumps(stack.to_document()))
    assert StackFile.load(str(tmp_path / "stack.json")) == stack


@pytest.mark.parametrize(("text", "needle"), [
    ("{not json", "cannot read stack file"),
    ('{"layer": [{"image": "a.erofs"}]}', 'expected {"layers"'),
    ('{"layers": []}', "at least one layer"),
    ('{"layers": [{"image": "a.erofs"}, {"devices": []}]}', 'layer 1: no "image" path'),
    ('{"layers": [{"image": "a.erofs", "devices": "b.tar"}]}', 'layer 0: "devices" must be a list of paths'),
    ('{"layers": [{"image": "a.erofs", "offset": -1}]}', 'layer 0: "offset" must be a byte count'),
    ('{"layers": [{"image": "a.erofs", "offset": "4096"}]}', 'layer 0: "offset" must be a byte count'),
    ('{"layers": [{"image": "a.erofs", "xattrs": 0}]}', 'layer 0: "xattrs" must be true or false'),
])
def test_a_malformed_stack_file_is_refused_in_one_line(tmp_path, text, needle):
    path = tmp_path / "stack.json"
    path.write_text(text)
    with pytest.raises(StackFileError) as caught:
        open_tree(str(path))
    assert needle in str(caught.value) and str(path) in str(caught.value)
    proc = subprocess.run(erofsfuse_command(str(path), str(tmp_path)), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr


def test_a_missing_layer_image_is_named(tmp_path):
    path = tmp_path / "stack.json"
    path.write_text(json.dumps({"layers": [{"image": corpus.image_path("layer1")}, {"image": "gone.erofs"}]}))
    with pytest.raises(DeviceError) as caught:
        open_tree(str(path))
    assert str(tmp_path / "gone.erofs") in str(caught.value)
