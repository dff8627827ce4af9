"""The FUSE operations called directly (no mount), checked against the library and the manifests."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import types

import pyfuse3
import pytest

from erofsfuse.erofs.errors import CorruptImage
from erofsfuse.erofs.image import ErofsImage
from erofsfuse.fuse.operations import ErofsOperations
from erofsfuse.fuse.tree import ROOT_INO, ImageTree

from . import corpus

ROOT_CTX = pyfuse3.RequestContext()
USER_CTX = types.SimpleNamespace(uid=1000, gid=1000, pid=1, umask=0o022)


@pytest.fixture
def ops():
    tree = ImageTree(ErofsImage(corpus.image_path("lz4hc-C32k-ztail-frag-dedupe")))
    yield ErofsOperations(tree)
    tree.close()


async def walk_to(ops: ErofsOperations, path: str) -> pyfuse3.EntryAttributes:
    ino = ROOT_INO
    attrs = await ops.getattr(ino, ROOT_CTX)
    for name in filter(None, path.split("/")):
        attrs = await ops.lookup(ino, os.fsencode(name), ROOT_CTX)
        ino = attrs.st_ino
    return attrs


@pytest.mark.trio
async def test_attributes_match_the_manifest(ops):
    m = corpus.manifest("lz4hc-C32k-ztail-frag-dedupe")["entries"]
    for path in ("/", "/files", "/links", "/special", "/times", "/owners"):
        for name in m[path]["entries"]:
            full = path.rstrip("/") + "/" + name
            e = m[full]
            attrs = await walk_to(ops, full)
            assert stat.S_IMODE(attrs.st_mode) == e["mode"]
            assert (attrs.st_uid, attrs.st_gid, attrs.st_size, attrs.st_nlink, attrs.st_blocks) == (
                e["uid"], e["gid"], e["size"], e["nlink"], e["blocks"])
            assert attrs.st_mtime_ns == attrs.st_atime_ns == attrs.st_ctime_ns == e["mtime_ns"]
            if e["rdev"]:
                assert (os.major(attrs.st_rdev), os.minor(attrs.st_rdev)) == (e["rdev"]["major"], e["rdev"]["minor"])
            if e["target"]:
                assert os.fsdecode(await ops.readlink(attrs.st_ino, ROOT_CTX)) == e["target"]
            assert attrs.entry_timeout > 3600 and attrs.attr_timeout > 3600


@pytest.mark.trio
async def test_reads_match_the_manifest(ops):
    m = corpus.manifest("lz4hc-C32k-ztail-frag-dedupe")["entries"]
    for path in m["/files"]["entries"]:
        e = m["/files/" + path]
        if e["type"] != "file":
            continue
        attrs = await walk_to(ops, "/files/" + path)
        info = await ops.open(attrs.st_ino, os.O_RDONLY, ROOT_CTX)
        assert info.keep_cache
        digest = hashlib.sha256()
        for off in range(0, e["size"], 65536):
            digest.update(await ops.read(info.fh, off, 65536))
        assert digest.hexdigest() == e["sha256"]
        assert await ops.read(info.fh, e["size"], 4096) == b""
        await ops.release(info.fh)


@pytest.mark.trio
async def test_negative_lookups_are_cached(ops):
    attrs = await ops.lookup(ROOT_INO, b"no-such-name", ROOT_CTX)
    assert attrs.st_ino == 0 and attrs.entry_timeout > 3600


@pytest.mark.trio
async def test_forgotten_nodes_are_rebuilt_from_their_inode_numbers(ops):
    """After forget (or in a restarted daemon) an inode number still names the same file."""
    first = await ops.lookup(ROOT_INO, b"files", ROOT_CTX)
    await ops.lookup(ROOT_INO, b"files", ROOT_CTX)
    await ops.forget([(first.st_ino, 1)])
    assert first.st_ino in ops.nodes
    await ops.forget([(first.st_ino, 1), (ROOT_INO, 5)])
    assert first.st_ino not in ops.nodes and ROOT_INO in ops.nodes
    fresh = ErofsOperations(ops.tree)
    again = await fresh.getattr(first.st_ino, ROOT_CTX)
    assert (again.st_mode, again.st_size, again.st_mtime_ns) == (first.st_mode, first.st_size, first.st_mtime_ns)
    with pytest.raises(pyfuse3.FUSEError) as info:
        await fresh.getattr(1 << 40, ROOT_CTX)
    assert info.value.errno == errno.ESTALE


@pytest.mark.trio
async def test_stack_inode_numbers_are_rebuilt_as_merged_nodes(tmp_path):
    """A merged directory's inode number, given to a fresh daemon, names the same merged directory."""
    from erofsfuse.fuse.stack import StackTree

    names = ["layer1", "layer2", "layer3"]
    tree = StackTree([ErofsImage(corpus.image_path(n)) for n in names])
    ops = ErofsOperations(tree)
    seen = {}
    for path in ("/etc", "/opt", "/usr", "/usr/bin", "/opt/opaque"):
        attrs = await walk_to(ops, path)
        seen[attrs.st_ino] = (path, ops.nodes[attrs.st_ino].parts)
    fresh = ErofsOperations(tree)
    for ino, (path, parts) in seen.items():
        node = fresh._node(ino)
        assert [(id(img), i.nid) for img, i in node.parts] == [(id(img), i.nid) for img, i in parts], path
    tree.close()


@pytest.mark.trio
async def test_xattrs_and_trusted_names_only_for_root(ops):
    m = corpus.manifest("lz4hc-C32k-ztail-frag-dedupe")["entries"]
    path = next(p for p, e in m.items() if any(k.startswith("trusted.") for k in e["xattrs"]) and
                any(k.startswith("user.") for k in e["xattrs"]))
    attrs = await walk_to(ops, path)
    names = await ops.listxattr(attrs.st_ino, ROOT_CTX)
    assert sorted(os.fsdecode(n) for n in names) == sorted(m[path]["xattrs"])
    for name in names:
        assert (await ops.getxattr(attrs.st_ino, name, ROOT_CTX)).hex() == m[path]["xattrs"][os.fsdecode(name)]
    user_names = await ops.listxattr(attrs.st_ino, USER_CTX)
    visible = sorted(k for k in m[path]["xattrs"] if not k.startswith("trusted."))
    assert sorted(os.fsdecode(n) for n in user_names) == visible
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.getxattr(attrs.st_ino, b"user.not-there", ROOT_CTX)
    assert info.value.errno == errno.ENODATA


@pytest.mark.trio
async def test_writes_are_refused(ops):
    attrs = await walk_to(ops, "/files")
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.open(attrs.st_ino, os.O_RDWR, ROOT_CTX)
    assert info.value.errno == errno.EROFS


@pytest.mark.trio
async def test_statfs_matches_the_kernel(ops):
    fs = corpus.manifest("lz4hc-C32k-ztail-frag-dedupe")["statfs"]
    out = await ops.statfs(ROOT_CTX)
    assert (out.f_bsize, out.f_blocks, out.f_files, out.f_ffree, out.f_namemax) == (
        fs["bsize"], fs["blocks"], fs["files"], fs["ffree"], fs["namemax"])


class BrokenTree(ImageTree):
    """A tree whose reads fail: with a typed corruption error, or with a bug."""

    def __init__(self, image, exc):
        super().__init__(image)
        self.exc = exc

    def read(self, node, offset, size):
        raise self.exc


@pytest.mark.trio
@pytest.mark.parametrize("exc", [CorruptImage("pcluster is garbage", 1234, "offset 0"), ZeroDivisionError("bug")])
async def test_failures_become_eio_and_are_logged(caplog, exc):
    tree = BrokenTree(ErofsImage(corpus.image_path("plain")), exc)
    ops = ErofsOperations(tree)
    attrs = await ops.lookup(ROOT_INO, b"files", ROOT_CTX)
    for _ in range(2):
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.read(attrs.st_ino, 0, 4096)
        assert info.value.errno == errno.EIO
    assert (await ops.getattr(ROOT_INO, ROOT_CTX)).st_ino == ROOT_INO
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == (1 if isinstance(exc, CorruptImage) else 2)
    assert str(exc) in errors[0].getMessage() or errors[0].exc_info
    tree.close()
