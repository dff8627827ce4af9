"""Extended attributes: inline and shared entries, long name prefixes, the name filter.

Names are presented exactly as the kernel presents them: short prefix
indexes become ``user.``/``trusted.``/``security.`` or the POSIX ACL names,
long prefixes expand to their stored infix, and entries without a known
namespace (index 0, lustre, or a long prefix based on those, such as the
inode digest) are never listed and cannot be read by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import xxhash

from . import ondisk as d
from .errors import CorruptImage, NoSuchAttribute
from .inode import Inode
from .metaspace import MetaSpace
from .superblock import Superblock

# Longest prefix first, so that "system.posix_acl_access" wins over nothing shorter.
_PREFIX_ORDER = sorted(d.XATTR_PREFIXES.items(), key=lambda item: -len(item[1]))


class LongPrefix(NamedTuple):
    base_index: int
    infix: bytes


class XattrHeader(NamedTuple):
    name_filter: int
    shared: tuple[int, ...]


def split_name(name: bytes) -> tuple[int, bytes] | None:
    """``(short prefix index, rest)`` for a full xattr name, or None if no namespace fits."""
    for index, prefix in _PREFIX_ORDER:
        if name.startswith(prefix):
            if index in (d.XATTR_INDEX_POSIX_ACL_ACCESS, d.XATTR_INDEX_POSIX_ACL_DEFAULT) and name != prefix:
                continue
            return index, name[len(prefix) :]
    return None


def read_metadata_record(read, pos: int) -> tuple[bytes, int]:
    """A length-prefixed record (u16 length, then bytes) at ``pos`` aligned to 4; returns it and the next position."""
    pos = d.round_up(pos, 4)
    (size,) = d.LE16.unpack(read(pos, 2))
    if not size:
        raise CorruptImage(f"empty metadata record at {pos}")
    return read(pos + 2, size), pos + 2 + size


def load_long_prefixes(sb: Superblock, meta: MetaSpace, inode: Callable[[int], Inode],
                       read_data: Callable[[Inode, int, int], bytes]) -> list[LongPrefix]:
    """The long xattr name prefix table: in the primary metadata, or in the data of the metabox or packed inode."""
    if not sb.xattr_prefix_count:
        return []
    if sb.compat(d.COMPAT_PLAIN_XATTR_PFX) or not (sb.metabox_nid or sb.packed_nid):
        read = meta.read
    else:
        holder = inode(sb.metabox_nid or sb.packed_nid)

        def read(pos: int, n: int) -> bytes:
            data = read_data(holder, pos, n)
            if len(data) != n:
                raise CorruptImage("long xattr prefix table runs past the end of its inode", holder.nid)
            return data

    prefixes = []
    pos = sb.xattr_prefix_start << 2
    for i in range(sb.xattr_prefix_count):
        record, pos = read_metadata_record(read, pos)
        if len(record) > d.NAME_LEN + 1:
            raise CorruptImage(f"long xattr prefix {i} is {len(record)} bytes long")
        prefixes.append(LongPrefix(record[0], record[1:]))
    return prefixes


class Xattrs:
    """Extended attribute access for one image."""

    def __init__(self, sb: Superblock, meta: MetaSpace, metabox: MetaSpace | None, prefixes: list[LongPrefix]):
        self.prefixes = prefixes
        self.use_filter = sb.compat(d.COMPAT_XATTR_FILTER) and not sb.xattr_filter_reserved
        shared_space = metabox if sb.compat(d.COMPAT_SHARED_EA_IN_METABOX) else meta
        if shared_space is None:
            raise CorruptImage("shared xattrs are in the metabox but the image has none")
        self.shared_space: MetaSpace = shared_space
        self.shared_base = sb.xattr_blkaddr << sb.blkszbits

    # -- decoding ----------------------------------------------------------
    def header(self, ino: Inode) -> XattrHeader | None:
        if ino.xattr_header is None:
            if not ino.xattr_isize:
                return None
            if ino.xattr_isize <= d.XATTR_IBODY_HEADER.size:
                raise CorruptImage(f"xattr area of {ino.xattr_isize} bytes holds no entries", ino.nid)
            pos = ino.iloc + ino.isize
            name_filter, count = d.XATTR_IBODY_HEADER.unpack(ino.space.read(pos, d.XATTR_IBODY_HEADER.size))
            if d.XATTR_IBODY_HEADER.size + 4 * count > ino.xattr_isize:
                raise CorruptImage(f"{count} shared xattrs do not fit the xattr area", ino.nid)
            raw = ino.space.read(pos + d.XATTR_IBODY_HEADER.size, 4 * count)
            shared = tuple(int.from_bytes(raw[i : i + 4], "little") for i in range(0, 4 * count, 4))
            ino.xattr_header = XattrHeader(name_filter, shared)
        return ino.xattr_header

    def _entry(self, space: MetaSpace, pos: int, limit: int | None, nid: int) -> tuple[int, bytes, bytes, int]:
        """One entry at ``pos``: (name index, name, value, size on disk)."""
        name_len, index, value_size = d.XATTR_ENTRY.unpack(space.read(pos, d.XATTR_ENTRY.size))
        size = d.xattr_entry_size(name_len, value_size)
        if limit is not None and size > limit:
            raise CorruptImage("xattr entry runs past the inode's xattr area", nid)
        body = space.read(pos + d.XATTR_ENTRY.size, name_len + value_size)
        return index, body[:name_len], body[name_len:], size

    def raw_entries(self, ino: Inode) -> list[tuple[int, bytes, bytes]]:
        """Every entry (inline first, then shared) as ``(name index, name, value)``."""
        header = self.header(ino)
        if header is None:
            return []
        out = []
        pos = ino.iloc + ino.isize + d.XATTR_IBODY_HEADER.size + 4 * len(header.shared)
        remaining = ino.xattr_isize - d.XATTR_IBODY_HEADER.size - 4 * len(header.shared)
        while remaining > 0:
            index, name, value, size = self._entry(ino.space, pos, remaining, ino.nid)
            out.append((index, name, value))
            pos += size
            remaining -= size
        for xid in header.shared:
            index, name, value, _ = self._entry(self.shared_space, self.shared_base + 4 * xid, None, ino.nid)
            out.append((index, name, value))
        return out

    def full_name(self, index: int, name: bytes) -> bytes | None:
        """The name the kernel shows for an entry, or None when it is never listed."""
        if index & d.XATTR_LONG_PREFIX:
            slot = index & d.XATTR_LONG_PREFIX_MASK
            if slot >= len(self.prefixes):
                return None
            prefix = self.prefixes[slot]
            index, name = prefix.base_index, prefix.infix + name
        base = d.XATTR_PREFIXES.get(index)
        return None if base is None else base + name

    # -- queries -------------------------------------------------------------
    def items(self, ino: Inode) -> list[tuple[bytes, bytes]]:
        """``(name, value)`` of every visible xattr, in on-disk order."""
        try:
            out = []
            for index, name, value in self.raw_entries(ino):
                full = self.full_name(index, name)
                if full is not None:
                    if b"\0" in full:  # listxattr separates names with NUL: this one cannot be shown or set
                        raise CorruptImage(f"xattr name {full!r} contains a NUL byte")
                    out.append((full, value))
            return out
        except CorruptImage as exc:
            raise exc.at(ino.nid, "xattrs") from None

    def names(self, ino: Inode) -> list[bytes]:
        return [name for name, _ in self.items(ino)]

    def get(self, ino: Inode, name: bytes) -> bytes:
        """The value of ``name``; raises ``NoSuchAttribute`` when absent."""
        split = split_name(name)
        if split is None or len(split[1]) > d.NAME_LEN:
            raise NoSuchAttribute(name.decode("utf-8", "surrogateescape"))
        index, suffix = split
        header = self.header(ino)
        if header is None:
            raise NoSuchAttribute(name.decode("utf-8", "surrogateescape"))
        if self.use_filter:
            bit = xxhash.xxh32_intdigest(suffix, d.XATTR_FILTER_SEED + index) & (d.XATTR_FILTER_BITS - 1)
            if header.name_filter & (1 << bit):
                raise NoSuchAttribute(name.decode("utf-8", "surrogateescape"))
        for full, value in self.items(ino):
            if full == name:
                return value
        raise NoSuchAttribute(name.decode("utf-8", "surrogateescape"))
