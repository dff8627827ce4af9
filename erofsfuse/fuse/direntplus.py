"""READDIRPLUS entries that carry a name, a type and an inode number but no attributes.

pyfuse3 always answers directory listings with READDIRPLUS, so every entry
normally hands the kernel a full set of attributes, and the kernel
instantiates an inode for it (to be forgotten again later). A listing for a
caller that only wants names and types (``find``, globbing, overlayfs merging
a directory) pays that for nothing. The FUSE protocol has the answer: an entry
whose node id is zero "did not want to return attributes" and the kernel only
passes its name, type and inode number on to the reader (fs/fuse/readdir.c,
``fuse_direntplus_link``).

pyfuse3 sets the node id and the inode number shown in the listing from one
property, ``EntryAttributes.st_ino``. This module finds, once, where pyfuse3
keeps the node id inside the object (by writing marker values through the
public properties and looking for them) and clears it after setting
``st_ino``. If the layout is not the expected one, ``names_only`` is ``None``
and listings carry attributes as before.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

import pyfuse3

log = logging.getLogger("erofsfuse")

_INO_MARK = 0x1F2E3D4C5B6A7988
_GENERATION_MARK = 0x0123456789ABCDEF
_WORD = ctypes.sizeof(ctypes.c_uint64)


def _words(obj: object) -> ctypes.Array:
    """The object's memory as 64-bit words (its C struct, after the Python header)."""
    return (ctypes.c_uint64 * (type(obj).__basicsize__ // _WORD)).from_address(id(obj))


def _node_id_offset() -> int | None:
    """Byte offset of libfuse's ``fuse_entry_param.ino`` in an ``EntryAttributes``, or None if not found.

    Expected: ``ino`` followed by ``generation``, and the inode number again
    later (``attr.st_ino``), the one the kernel shows to readers.
    """
    probe = pyfuse3.EntryAttributes()
    probe.st_ino = _INO_MARK
    probe.generation = _GENERATION_MARK
    words = list(_words(probe))
    found = [i for i, word in enumerate(words) if word == _INO_MARK]
    if len(found) != 2 or words[found[0] + 1] != _GENERATION_MARK:
        return None
    node_id, shown = found
    _words(probe)[node_id] = 0
    if probe.st_ino != 0 or _words(probe)[shown] != _INO_MARK:
        return None
    return node_id * _WORD


def _builder() -> Callable[[int, int], pyfuse3.EntryAttributes] | None:
    offset = _node_id_offset()
    if offset is None:
        log.info("pyfuse3 %s: unknown EntryAttributes layout, every listed entry carries attributes",
                 getattr(pyfuse3, "__version__", "?"))
        return None
    entry = pyfuse3.EntryAttributes()
    node_id = ctypes.c_uint64.from_address(id(entry) + offset)

    def names_only(ino: int, mode: int) -> pyfuse3.EntryAttributes:
        """A listing entry showing inode number ``ino`` and the file type in ``mode``, and nothing else.

        The entry is one shared object, valid until the next call: hand it straight to
        ``pyfuse3.readdir_reply``, which copies it into the reply.
        """
        entry.st_ino = ino
        entry.st_mode = mode
        node_id.value = 0
        return entry

    return names_only


names_only = _builder()
