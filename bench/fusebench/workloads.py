"""What is measured on a mount, and how.

Every cold measurement starts from dropped page, dentry and inode caches,
so the image file itself is read from disk again and a FUSE daemon sees
every request. Results are kept in the unit they are shown in.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .datagen import DataSet, MiB
from .readers import Mount

READ_BUFFER = 1 * MiB
PAGE = 4096
COMMAND_TIMEOUT = 3600
SETTLE_SECONDS = 0.3  # after dropping caches, let FUSE daemons handle the FORGETs it causes


class WorkloadError(Exception):
    """A reader returned something other than the data set (wrong size or file count)."""


@dataclass(frozen=True)
class Measurement:
    key: str
    label: str
    unit: str
    higher_is_better: bool


MOUNT = Measurement("mount", "mount, until the root's first stat", "ms", False)
SEQ_COLD = Measurement("seq_cold", "sequential read, cold", "MB/s", True)
SEQ_WARM = Measurement("seq_warm", "sequential re-read, warm (reopened)", "MB/s", True)
RANDOM_READS = Measurement("random_4k", "random 4 KiB preads, cold", "reads/s", True)
FIND = Measurement("find", "find -type f | wc -l, cold", "s", False)
LS_LR = Measurement("ls_lR", "ls -lR > /dev/null, cold", "s", False)
TAR = Measurement("tar", "tar cf - . | cat > /dev/null, cold", "s", False)
PEAK_RSS = Measurement("peak_rss", "daemon peak RSS (VmHWM)", "MiB", False)
DAEMON_CPU = Measurement("daemon_cpu", "daemon CPU time, whole session", "s", False)
MEASUREMENTS = {m.key: m for m in (MOUNT, SEQ_COLD, SEQ_WARM, RANDOM_READS, FIND, LS_LR, TAR, PEAK_RSS, DAEMON_CPU)}
PER_DATASET = {
    "bigfile": (MOUNT, SEQ_COLD, SEQ_WARM, RANDOM_READS, PEAK_RSS, DAEMON_CPU),
    "smallfiles": (MOUNT, FIND, LS_LR, TAR, PEAK_RSS, DAEMON_CPU),
}

Progress = Callable[[str], None]


def drop_caches() -> None:
    """Write back, then drop page cache, dentries and inodes (the image files' pages included)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as knob:
        knob.write("3\n")
    time.sleep(SETTLE_SECONDS)


def timed(action: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def read_whole_file(path: Path) -> int:
    """Read ``path`` front to back in 1 MiB requests; returns the bytes read."""
    buffer = bytearray(READ_BUFFER)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while count := f.readinto(buffer):
            total += count
    return total


def random_offsets(size: int, count: int, seed: int) -> list[int]:
    """Page-aligned offsets, the same for every reader in a run."""
    rng = random.Random(seed)
    pages = size // PAGE
    return [rng.randrange(pages) * PAGE for _ in range(count)]


def pread_all(path: Path, offsets: list[int]) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return sum(len(os.pread(fd, PAGE, offset)) for offset in offsets)
    finally:
        os.close(fd)


def count_files(root: Path) -> int:
    done = subprocess.run(["find", ".", "-type", "f"], cwd=root, capture_output=True, check=True,
                          timeout=COMMAND_TIMEOUT)
    return done.stdout.count(b"\n")


def list_recursively(root: Path) -> None:
    subprocess.run(["ls", "-lR", "."], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True,
                   timeout=COMMAND_TIMEOUT)


def tar_everything(root: Path) -> None:
    """Archive to a pipe: GNU tar skips reading file data when its output is /dev/null itself."""
    tar = subprocess.Popen(["tar", "cf", "-", "."], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cat = subprocess.run(["cat"], stdin=tar.stdout, stdout=subprocess.DEVNULL, check=False, timeout=COMMAND_TIMEOUT)
    tar.stdout.close()
    errors = tar.stderr.read()
    if tar.wait() != 0 or cat.returncode != 0:
        raise WorkloadError(f"tar failed ({tar.returncode}): {errors.decode(errors='replace').strip()[:300]}")


def daemon_figures(mount: Mount) -> dict[str, float]:
    """Peak RSS and CPU time of the FUSE daemon, read just before unmounting."""
    rss = mount.peak_rss_bytes()
    cpu = mount.cpu_seconds()
    figures = {}
    if rss is not None:
        figures[PEAK_RSS.key] = rss / MiB
    if cpu is not None:
        figures[DAEMON_CPU.key] = cpu
    return figures


def bigfile_session(mount: Mount, dataset: DataSet, offsets: list[int], progress: Progress) -> dict[str, float]:
    """Cold and warm sequential reads, then cold random reads, of the large file."""
    path = mount.mountpoint / dataset.big_file
    results = {MOUNT.key: mount.seconds * 1000}
    progress(SEQ_COLD.label)
    drop_caches()
    seconds, size = timed(lambda: read_whole_file(path))
    check_size(size, dataset.total_bytes)
    results[SEQ_COLD.key] = size / seconds / 1e6
    progress(SEQ_WARM.label)
    seconds, size = timed(lambda: read_whole_file(path))
    check_size(size, dataset.total_bytes)
    results[SEQ_WARM.key] = size / seconds / 1e6
    progress(f"{RANDOM_READS.label} ({len(offsets)})")
    drop_caches()
    seconds, size = timed(lambda: pread_all(path, offsets))
    check_size(size, len(offsets) * PAGE)
    results[RANDOM_READS.key] = len(offsets) / seconds
    return results | daemon_figures(mount)


def smallfiles_session(mount: Mount, dataset: DataSet, progress: Progress) -> dict[str, float]:
    """Walk, list and archive the small-files tree, each from cold caches."""
    root = mount.mountpoint
    results = {MOUNT.key: mount.seconds * 1000}
    progress(FIND.label)
    drop_caches()
    seconds, files = timed(lambda: count_files(root))
    if files != dataset.files:
        raise WorkloadError(f"find saw {files} files, the data set has {dataset.files}")
    results[FIND.key] = seconds
    progress(LS_LR.label)
    drop_caches()
    results[LS_LR.key], _ = timed(lambda: list_recursively(root))
    progress(TAR.label)
    drop_caches()
    results[TAR.key], _ = timed(lambda: tar_everything(root))
    return results | daemon_figures(mount)


def check_size(got: int, expected: int) -> None:
    if got != expected:
        raise WorkloadError(f"read {got} bytes, expected {expected}")
