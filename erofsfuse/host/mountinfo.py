"""The kernel's table of this process's mounts (``/proc/self/mountinfo``), read in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountInfo:
    """One mount, as the kernel accounts for it."""

    mount_id: int  # new for every mount, never reused while this one exists
    device: str  # major:minor of the mounted filesystem
    target: Path
    fstype: str
    source: str
    options: tuple[str, ...]  # per mount: ro, nosuid, ...
    super_options: tuple[str, ...]  # per filesystem: allow_other, default_permissions, ...


def unescape(field: str) -> str:
    """Undo the octal escapes (space, tab, newline, backslash) the kernel writes in paths."""
    return _OCTAL.sub(lambda m: chr(int(m[1], 8)), field) if "\\" in field else field


def parse(line: str) -> MountInfo:
    fields = line.split()
    sep = fields.index("-", 6)  # optional fields come before the separator
    return MountInfo(int(fields[0]), fields[2], Path(unescape(fields[4])), fields[sep + 1], unescape(fields[sep + 2]),
                     tuple(fields[5].split(",")), tuple(fields[sep + 3].split(",")))


def mount_table() -> list[MountInfo]:
    """Every mount this process sees, in mount order (a later one may be stacked on an earlier one)."""
    # paths are bytes to the kernel: decode them as Python decodes file names
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
        return [parse(line) for line in f]
