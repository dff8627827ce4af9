"""Deep OCI images: busybox plus layers made by test_flatten's ``ChainGenerator`` (files, directories at
several depths, symlinks, hard links, devices, fifos, xattrs, owners, and whiteouts, opaque directories and
replacements aimed at what the layers below hold), written as the PAX tarballs image builders write.

The generator writes each layer in overlay form (whiteouts as 0:0 character devices, opaque directories
with ``trusted.overlay.opaque``); a tarball carries them in the AUFS form of the OCI image spec instead
(``.wh.NAME`` and ``.wh..wh..opq``), which containerd's appliers turn back into overlay form. Sockets,
which a tarball cannot hold, are left out.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path

from tests.snapshotter import oci
from tests.test_flatten import ChainGenerator

OVERLAY_PRIVATE = "trusted.overlay."
OPAQUE = "trusted.overlay.opaque"
WHITEOUT = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Lists what a program sees through the rootfs (not its times, which differ in precision between the
# snapshotters' upper dirs), and reads every file.
SCRIPT = r"""exec 2>&1
find / -xdev \( -path /proc -o -path /sys -o -path /dev \) -prune -o -print | sort | while read -r f; do
  if [ -d "$f" ] && [ ! -L "$f" ]; then stat -c '%n %A %u:%g' "$f"; else stat -c '%n %A %u:%g %s %h %N' "$f"; fi
done
find / -xdev -type f ! -path '/proc/*' ! -path '/sys/*' -print0 | xargs -0 sha256sum | sort
"""


def _pax_xattrs(path: str) -> dict[str, str]:
    """The xattrs of ``path`` as SCHILY records (overlay's own are markers, written as files instead)."""
    records = {}
    for name in sorted(os.listxattr(path, follow_symlinks=False)):
        if not name.startswith(OVERLAY_PRIVATE):
            value = os.getxattr(path, name, follow_symlinks=False)
            records[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    return records


def layer_tarball(tree: Path, output: Path) -> Path:
    """A layer tarball of ``tree`` (overlay form) in OCI form, parents before children, names sorted."""
    with tarfile.open(output, "w", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
        for directory, dirs, files in os.walk(tree):
            dirs.sort()
            rel_dir = os.path.relpath(directory, tree)
            prefix = "" if rel_dir == "." else rel_dir + "/"
            if prefix and _opaque(directory):
                tar.addfile(_empty(prefix + OPAQUE_MARKER))
            for name in sorted(dirs + files):
                path = os.path.join(directory, name)
                st = os.lstat(path)
                if stat.S_ISSOCK(st.st_mode):
                    continue
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    tar.addfile(_empty(prefix + WHITEOUT + name))
                    continue
                info = tar.gettarinfo(path, prefix + name)
                info.pax_headers = _pax_xattrs(path)
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return output


def _opaque(directory: str) -> bool:
    return OPAQUE in os.listxattr(directory, follow_symlinks=False) and \
        os.getxattr(directory, OPAQUE, follow_symlinks=False) == b"y"


def _empty(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = 0o644, oci.MTIME
    return info


def busybox_layer() -> oci.Layer:
    layer = oci.Layer().dir("/bin").file("/bin/busybox", oci.BUSYBOX.read_bytes(), 0o755)
    for applet in oci.APPLETS:
        layer.symlink(f"/bin/{applet}", "busybox")
    return layer


def deep_image(base: Path, layers: int, seed: int = 1,
               name: str = "docker.io/library/erofs-deep") -> tuple[oci.Image, dict[str, set[int]]]:
    """An image of ``layers`` layers (busybox, then generated ones) whose command prints ``SCRIPT``'s listing,
    and the depths at which its layers have whiteouts and opaque directories. Layer trees are made one at a
    time and deleted once in their tarball."""
    base.mkdir(parents=True, exist_ok=True)
    tars = [busybox_layer().write(base / "layer-000.tar")]
    generator = ChainGenerator(seed)
    for index in range(layers - 1):
        tree = base / f"tree-{index:03d}"
        generator.layer(tree, index, 24 if index == 0 else 5)
        tars.append(layer_tarball(tree, base / f"layer-{index + 1:03d}.tar"))
        shutil.rmtree(tree)
    image = oci.build_archive(base / "image.tar", tars, ["/bin/sh", "-c", SCRIPT], {"root": ""}, name=name)
    for tar in tars:
        tar.unlink()
    return image, generator.depths
