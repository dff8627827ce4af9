"""A small multi-layer OCI image built locally (no registry): busybox plus layers that exercise
whiteouts, an opaque directory, xattrs, owners, modes, hard and symbolic links.

Layers are written as PAX tarballs the way image builders write them (``.wh.`` whiteouts,
``.wh..wh..opq`` opaque markers, ``SCHILY.xattr.*`` records), then put in an OCI image layout archive
that ``ctr images import`` reads.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.trees import sha256_file

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "ls", "find", "stat", "id", "sort", "sha256sum", "xargs", "echo", "head", "wc", "du", "rm",
           "mkdir", "touch", "readlink", "sleep")
MTIME = 1_600_000_000
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"
GROUP = b"root:x:0:\nuser:x:1000:\n"


@dataclass
class Layer:
    """Entries of one layer tarball, in order."""

    members: list[tuple[tarfile.TarInfo, bytes | None]] = field(default_factory=list)

    def _info(self, name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0,
              xattrs: dict[str, str] | None = None) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name.lstrip("/"))
        info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, MTIME
        if xattrs:
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
        return info

    def dir(self, name: str, mode: int = 0o755, **kw) -> Layer:
        self.members.append((self._info(name, tarfile.DIRTYPE, mode, **kw), None))
        return self

    def file(self, name: str, data: bytes, mode: int = 0o644, **kw) -> Layer:
        info = self._info(name, tarfile.REGTYPE, mode, **kw)
        info.size = len(data)
        self.members.append((info, data))
        return self

    def symlink(self, name: str, target: str) -> Layer:
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.members.append((info, None))
        return self

    def hardlink(self, name: str, target: str) -> Layer:
        info = self._info(name, tarfile.LNKTYPE, 0o644)
        info.linkname = target.lstrip("/")
        self.members.append((info, None))
        return self

    def whiteout(self, name: str) -> Layer:
        parent, _, base = name.rpartition("/")
        return self.file(f"{parent}/.wh.{base}", b"")

    def opaque(self, directory: str) -> Layer:
        return self.file(f"{directory}/.wh..wh..opq", b"")

    def write(self, path: Path) -> Path:
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in self.members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return path


def sample_layers() -> list[Layer]:
    busybox = BUSYBOX.read_bytes()
    base = (Layer().dir("/bin").file("/bin/busybox", busybox, 0o755)
            .dir("/etc").file("/etc/passwd", PASSWD).file("/etc/group", GROUP)
            .dir("/home").dir("/home/user", 0o750, uid=1000, gid=1000)
            .file("/home/user/notes", b"user notes\n", 0o600, uid=1000, gid=1000)
            .dir("/root", 0o700).file("/root/secret", b"root only\n", 0o600)
            .dir("/data").file("/data/keep.txt", b"version 1\n").file("/data/remove-me.txt", b"to be deleted\n")
            .dir("/data/dir-to-delete").file("/data/dir-to-delete/a.txt", b"a\n")
            .dir("/opaque").file("/opaque/old.txt", b"hidden by opaque\n").dir("/opaque/sub")
            .file("/opaque/sub/deep.txt", b"deep\n")
            .file("/xattr-file", b"has xattrs\n", xattrs={"user.color": "blue", "user.empty": ""})
            .hardlink("/data/keep-link", "/data/keep.txt")
            .symlink("/data/link-to-keep", "keep.txt")
            .file("/setuid", b"#!/bin/sh\n", 0o4755))
    for applet in APPLETS:
        base.symlink(f"/bin/{applet}", "busybox")
    middle = (Layer().dir("/data").whiteout("/data/remove-me.txt").whiteout("/data/dir-to-delete")
              .file("/data/keep.txt", b"version 2\n").file("/data/added.txt", b"added in layer 2\n", 0o640, gid=1000)
              .dir("/opaque").opaque("/opaque").file("/opaque/new.txt", b"only this survives\n")
              .file("/xattr-file", b"rewritten\n", xattrs={"user.color": "green", "user.shape": "round"}))
    top = (Layer().dir("/data").file("/data/remove-me.txt", b"re-added in layer 3\n", 0o600, uid=1000, gid=1000)
           .whiteout("/setuid").dir("/opaque").dir("/opaque/sub", 0o700)
           .file("/opaque/sub/fresh.txt", b"fresh\n", xattrs={"user.layer": "3"}))
    return [base, middle, top]


def _digest(path: Path) -> str:
    """An OCI digest: the file's SHA-256 with its algorithm."""
    return "sha256:" + sha256_file(str(path))


def chain_id(diff_ids: list[str]) -> str:
    """The snapshot name containerd gives the top of a layer stack (the image spec's ChainID)."""
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    return chain


@dataclass
class Image:
    archive: Path
    refs: dict[str, str]  # user ("root"/"user") -> image reference
    chain_id: str


def build_archive(path: Path, layer_tars: list[Path], command: list[str], users: dict[str, str],
                  name: str = "docker.io/library/erofs-test") -> Image:
    """An OCI image layout tarball of gzip-compressed layers with one tagged manifest per user (the layers
    are shared). Layers are streamed from files, so they may be large."""
    blobs: dict[str, Path] = {}
    work = path.parent / f".{path.name}.blobs"
    work.mkdir(exist_ok=True)

    def add_blob(source: Path, media_type: str) -> dict:
        digest = _digest(source)
        blobs[digest] = source
        return {"mediaType": media_type, "digest": digest, "size": source.stat().st_size}

    def add_json(document: dict, media_type: str) -> dict:
        data = json.dumps(document).encode()
        tmp = work / hashlib.sha256(data).hexdigest()
        tmp.write_bytes(data)
        return add_blob(tmp, media_type)

    diff_ids = [_digest(t) for t in layer_tars]
    layer_descs = []
    for i, tar in enumerate(layer_tars):
        compressed = work / f"layer-{i}.tar.gz"
        with open(tar, "rb") as src, gzip.GzipFile(compressed, "wb", compresslevel=1, mtime=0) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        layer_descs.append(add_blob(compressed, "application/vnd.oci.image.layer.v1.tar+gzip"))
    manifests, refs = [], {}
    for tag, user in users.items():
        config = {"architecture": "amd64", "os": "linux", "created": "2020-09-13T12:26:40Z",
                  "config": {"Cmd": command, "User": user, "Env": ["PATH=/bin:/usr/local/bin"], "WorkingDir": "/"},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": []}
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": add_json(config, "application/vnd.oci.image.config.v1+json"), "layers": layer_descs}
        desc = add_json(manifest, "application/vnd.oci.image.manifest.v1+json")
        refs[tag] = f"{name}:{tag}"
        desc["annotations"] = {"io.containerd.image.name": refs[tag], "org.opencontainers.image.ref.name": tag}
        manifests.append(desc)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
    with tarfile.open(path, "w") as out:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), MTIME
            out.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add("index.json", json.dumps(index).encode())
        for digest, source in blobs.items():
            out.add(source, f"blobs/sha256/{digest.removeprefix('sha256:')}", recursive=False)
    shutil.rmtree(work)
    return Image(path, refs, chain_id(diff_ids))
