"""Byte access to the primary device and the extra devices of an image.

Addresses are resolved the way the kernel's ``erofs_map_dev`` does it:

* device id 0 means the unified address space: an address that falls inside
  an extra device's ``[uniaddr, uniaddr + blocks)`` range is redirected to
  that device, anything else is read from the primary device;
* device id N (1-based) reads device N directly;
* in the *flat* layout (no device files given for an image that has extra
  devices) every extra device is expected inside the primary file at its
  unified address, so all reads go to the primary file.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass

from .errors import CorruptImage, DeviceError


class BackingFile:
    """One opened file or block device, read with ``pread`` from ``base``."""

    __slots__ = ("path", "fd", "base", "size")

    def __init__(self, path: str, base: int = 0):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise DeviceError(f"cannot open {path}: {exc.strerror}") from None
        st = os.fstat(self.fd)
        if stat.S_ISBLK(st.st_mode):
            total = os.lseek(self.fd, 0, os.SEEK_END)
        elif stat.S_ISREG(st.st_mode):
            total = st.st_size
        else:
            os.close(self.fd)
            raise DeviceError(f"{path} is neither a regular file nor a block device")
        if base < 0 or base > total:
            os.close(self.fd)
            raise DeviceError(f"offset {base} is outside {path} ({total} bytes)")
        self.base = base
        self.size = total - base

    def pread(self, pos: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``pos``; a read past the end is corruption."""
        if pos < 0 or length < 0 or pos + length > self.size:
            raise CorruptImage(f"read of {length} bytes at {pos} is past the end of {self.path} ({self.size} bytes)")
        data = os.pread(self.fd, length, self.base + pos)
        if len(data) != length:
            raise CorruptImage(f"short read of {self.path} at {pos}: {len(data)} of {length} bytes")
        return data

    def prefetch(self, pos: int, length: int) -> None:
        """Ask the kernel to start reading ahead (a hint: failures do not matter)."""
        if 0 <= pos < self.size:
            with contextlib.suppress(OSError):
                os.posix_fadvise(self.fd, self.base + pos, min(length, self.size - pos), os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class DeviceSlot:
    """An entry of the on-disk device table (sizes in blocks)."""

    tag: bytes
    blocks: int
    uniaddr: int


class DeviceSet:
    """The primary device plus the extra devices, addressed as the kernel does."""

    def __init__(self, primary: BackingFile, extras: list[BackingFile], blkszbits: int):
        self.primary = primary
        self.extras = extras
        self.blkszbits = blkszbits
        self.slots: list[DeviceSlot] = []
        self._ranges: list[tuple[int, int, BackingFile]] = []

    @property
    def flat(self) -> bool:
        """True when the image has extra devices but none were given as files."""
        return bool(self.slots) and not self.extras

    def attach_table(self, slots: list[DeviceSlot]) -> None:
        """Bind the on-disk device table; the number of files given must match it."""
        if self.extras and len(self.extras) != len(slots):
            raise DeviceError(
                f"the image has {len(slots)} extra device(s) but {len(self.extras)} were given"
            )
        self.slots = slots
        self._ranges = []
        if self.extras:
            for slot, dev in zip(slots, self.extras, strict=True):
                if slot.uniaddr:
                    start = slot.uniaddr << self.blkszbits
                    self._ranges.append((start, start + (slot.blocks << self.blkszbits), dev))

    def read(self, pa: int, length: int, device_id: int = 0) -> bytes:
        """Read ``length`` bytes at physical address ``pa`` of ``device_id``."""
        dev, pos = self.locate(pa, device_id)
        return dev.pread(pos, length)

    def prefetch(self, pa: int, length: int, device_id: int = 0) -> None:
        dev, pos = self.locate(pa, device_id)
        dev.prefetch(pos, length)

    def locate(self, pa: int, device_id: int = 0) -> tuple[BackingFile, int]:
        if device_id:
            if device_id > len(self.slots):
                raise CorruptImage(f"device id {device_id} is not in the device table ({len(self.slots)} devices)")
            if not self.extras:
                return self.primary, pa + (self.slots[device_id - 1].uniaddr << self.blkszbits)
            return self.extras[device_id - 1], pa
        for start, end, dev in self._ranges:
            if start <= pa < end:
                return dev, pa - start
        return self.primary, pa

    def close(self) -> None:
        self.primary.close()
        for dev in self.extras:
            dev.close()
