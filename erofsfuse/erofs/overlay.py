"""How a layer's deletions are written down, in an image and in a layer tarball.

In an image (overlayfs' form) a deleted name is a whiteout, a 0:0 character
device, and a directory that hides everything below it is opaque: its
``overlay.opaque`` xattr is ``y``, in the ``trusted.`` namespace or in
``user.`` for unprivileged overlays. A tarball in the AUFS form, the one OCI
layers use, says the same with entries: ``.wh.NAME`` deletes NAME and
``.wh..wh..opq`` makes its directory opaque.
"""

from __future__ import annotations

import stat

from .inode import Inode

OPAQUE_XATTRS = (b"trusted.overlay.opaque", b"user.overlay.opaque")
WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"


def is_whiteout(ino: Inode) -> bool:
    return stat.S_ISCHR(ino.mode) and ino.rdev == 0
