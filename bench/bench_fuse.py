#!/usr/bin/env python3
"""Benchmark erofsfuse against the kernel's EROFS driver, squashfuse and erofs-utils' erofsfuse.

One command builds the data (deterministic, cached in the work directory),
makes the images and measures every reader on them, interleaving runs
across readers so that drift on a shared machine hits all of them alike.
Run it as root, with the project's interpreter:

    .venv/bin/python bench/bench_fuse.py            # full: 512 MiB file, 50,000 files, 5 runs
    .venv/bin/python bench/bench_fuse.py --quick    # smoke test: 64 MiB, 5,000 files, 3 runs
    .venv/bin/python bench/bench_fuse.py --only kernel,erofsfuse --formats lz4hc --datasets smallfiles

erofs-utils' erofsfuse gets a column when a native ``erofsfuse`` binary is on PATH.
``erofsfuse-verity`` is this project's erofsfuse checking every block it reads against a dm-verity
tree of the image (written beside it once), to show what verified serving costs next to the plain column.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fusebench.datagen import DataSet, KiB, MiB, big_file_set, small_files_set
from fusebench.images import DEFAULT_FORMATS, FORMATS, Image, build_image, is_built, probe, tool_versions
from fusebench.readers import (
    EROFSFUSE,
    READER_NAMES,
    REPO_ROOT,
    MountError,
    Reader,
    available_readers,
    detach_everything_under,
    kill_leftover_daemons,
    mounted,
)
from fusebench.report import Group, Results, as_json, render, write_json
from fusebench.workloads import WorkloadError, bigfile_session, drop_caches, random_offsets, smallfiles_session

DATASET_NAMES = ("bigfile", "smallfiles")


@dataclass(frozen=True)
class Settings:
    workdir: Path
    json_path: Path
    runs: int
    big_size: int
    files: int
    dirs: int
    max_file_size: int
    random_reads: int
    seed: int
    formats: tuple[str, ...]
    readers: tuple[str, ...]
    datasets: tuple[str, ...]

    @property
    def mount_root(self) -> Path:
        return self.workdir / "mnt"


def comma_list(allowed: tuple[str, ...] | list[str]):
    """An argparse type: a comma-separated subset of ``allowed``, in the order given."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(filter(None, (part.strip() for part in text.split(","))))
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)} (got {text!r})")
        return names

    return parse


def parse_settings(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/erofsfuse-bench"),
                        help="where data, images, mountpoints, daemon logs and results go (reused)")
    parser.add_argument("--json", type=Path, help="where to write raw samples and medians (default: in workdir)")
    parser.add_argument("--runs", type=int, help="runs per measurement (default 5; 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small data and 3 runs: a smoke test")
    parser.add_argument("--only", type=comma_list(READER_NAMES), default=READER_NAMES,
                        help=f"readers to measure, from {','.join(READER_NAMES)} (default: all found)")
    parser.add_argument("--formats", type=comma_list(list(FORMATS)), default=DEFAULT_FORMATS,
                        help=f"image formats, from {','.join(FORMATS)} (default: {','.join(DEFAULT_FORMATS)}; "
                             "those the installed tools cannot write are skipped)")
    parser.add_argument("--datasets", type=comma_list(DATASET_NAMES), default=DATASET_NAMES,
                        help="data sets: bigfile (one large file), smallfiles (many small files)")
    parser.add_argument("--random-reads", type=int, help="random 4 KiB reads per pass (default 20000; 2000 quick)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated data and read offsets")
    args = parser.parse_args(argv)
    quick = args.quick
    runs = args.runs or (3 if quick else 5)
    if runs < 1:
        parser.error("--runs must be at least 1")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Settings(
        workdir=args.workdir, json_path=args.json or args.workdir / f"bench-fuse-{stamp}.json", runs=runs,
        big_size=(64 if quick else 512) * MiB, files=5_000 if quick else 50_000, dirs=100, max_file_size=16 * KiB,
        random_reads=args.random_reads or (2_000 if quick else 20_000), seed=args.seed, formats=args.formats,
        readers=args.only, datasets=args.datasets,
    )


def preflight(settings: Settings) -> list[str]:
    """Problems that make the benchmark impossible, found before doing any work."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root: it drops page caches (/proc/sys/vm/drop_caches) and mounts filesystems; "
                        "try: sudo .venv/bin/python bench/bench_fuse.py")
    for tool in ("mkfs.erofs", "fusermount3", "find", "tar"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is not installed")
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse is missing (modprobe fuse)")
    if EROFSFUSE in settings.readers and importlib.util.find_spec("pyfuse3") is None:
        problems.append(f"{sys.executable} cannot import pyfuse3: run with the project's interpreter, .venv/bin/python")
    return problems


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- preparing data and images ----------------------------------------------------------------
def prepare_datasets(settings: Settings) -> list[DataSet]:
    data_dir = settings.workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    datasets = []
    if "bigfile" in settings.datasets:
        say(f"data: {settings.big_size // MiB} MiB file (generated on first use)")
        datasets.append(big_file_set(data_dir, settings.big_size, settings.seed))
    if "smallfiles" in settings.datasets:
        say(f"data: {settings.files} small files in {settings.dirs} directories (generated on first use)")
        datasets.append(small_files_set(data_dir, settings.files, settings.dirs, settings.max_file_size, settings.seed))
    return datasets


def usable_formats(settings: Settings, want_squashfs: bool, notes: list[str]) -> dict[str, list[str]]:
    """For each requested format, the image kinds the installed tools can write (probed on a tiny tree)."""
    scratch = settings.workdir / "probe"
    usable = {}
    for name in settings.formats:
        kinds = []
        for kind in ("erofs", "squashfs") if want_squashfs else ("erofs",):
            problem = probe(kind, FORMATS[name], scratch)
            if problem:
                notes.append(f"format {name}: no {kind} image, the installed tool cannot write it ({problem})")
                if kind == "erofs":
                    break
            else:
                kinds.append(kind)
        if "erofs" in kinds:
            usable[name] = kinds
    shutil.rmtree(scratch, ignore_errors=True)
    return usable


def prepare_groups(settings: Settings, datasets: list[DataSet], want_squashfs: bool, notes: list[str]) -> list[Group]:
    image_dir = settings.workdir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    groups = []
    for name, kinds in usable_formats(settings, want_squashfs, notes).items():
        for dataset in datasets:
            images: dict[str, Image] = {}
            for kind in kinds:
                state = "reused" if is_built(kind, FORMATS[name], dataset, image_dir) else "building"
                say(f"image: {dataset.kind} {name} {kind}: {state}")
                images[kind] = build_image(kind, FORMATS[name], dataset, image_dir)
            groups.append(Group(dataset, FORMATS[name], images))
    return groups


# -- measuring ----------------------------------------------------------------------------------
def rotated(readers: list[Reader], run: int) -> list[Reader]:
    """Start each run with a different reader, so no reader always goes first after a cache drop."""
    shift = (run - 1) % len(readers)
    return readers[shift:] + readers[:shift]


def measure_once(settings: Settings, group: Group, reader: Reader, run: int, offsets: list[int],
                 results: Results, started: float) -> None:
    """One session: mount (cold), run the data set's workloads, read the daemon's figures, unmount."""
    image = group.images[reader.image_kind]

    def progress(what: str) -> None:
        say(f"[{time.monotonic() - started:7.0f}s] run {run}/{settings.runs} {group.key} {reader.name}: {what}")

    progress("mount, cold")
    drop_caches()
    try:
        with mounted(reader, image, settings.mount_root / reader.name, settings.workdir / "logs") as mount:
            if group.dataset.kind == "bigfile":
                values = bigfile_session(mount, group.dataset, offsets, progress)
            else:
                values = smallfiles_session(mount, group.dataset, progress)
    except (MountError, WorkloadError, OSError, subprocess.SubprocessError) as exc:
        say(f"  error: {exc}")
        results.add_error(group, reader.name, run, str(exc))
        return
    results.add(group, reader.name, values)


def measure(settings: Settings, groups: list[Group], readers: list[Reader], results: Results) -> None:
    """Run 1 of every (group, reader), then run 2, and so on."""
    started = time.monotonic()
    for run in range(1, settings.runs + 1):
        offsets = random_offsets(settings.big_size, settings.random_reads, settings.seed * 1000 + run)
        for group in groups:
            for reader in rotated(readers, run):
                if reader.image_kind in group.images:
                    measure_once(settings, group, reader, run, offsets, results, started)


# -- context and cleanup ------------------------------------------------------------------------
def environment() -> dict[str, object]:
    """What the numbers depend on, for the record."""
    with open("/proc/meminfo") as f:
        memory = f.readline().split()[1]
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    git = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"], capture_output=True,
                         text=True, check=False).stdout.strip()
    return {
        "kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": cpu, "memory_kib": int(memory),
        "python": sys.version.split()[0], "tools": tool_versions(), "project_revision": git or "unknown",
        "loadavg_at_start": os.getloadavg(),
    }


@contextlib.contextmanager
def terminate_cleanly(mount_root: Path) -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt, and on the way out leave no mount or daemon behind."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        killed = kill_leftover_daemons()
        stale = detach_everything_under(mount_root) if mount_root.exists() else []
        if killed or stale:
            say(f"cleanup: killed {killed} daemon(s), lazily unmounted {len(stale)} mount(s)")


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    problems = preflight(settings)
    if problems:
        for problem in problems:
            print(f"bench_fuse: {problem}", file=sys.stderr)
        return 2
    found, missing = available_readers()
    readers = [found[name] for name in READER_NAMES if name in settings.readers and name in found]
    notes = [f"{name} column skipped: {why}" for name, why in missing.items() if name in settings.readers]
    notes.append("the machine may be shared with other work: medians resist outliers, but expect noise")
    recorded = {key: str(value) if isinstance(value, Path) else value for key, value in vars(settings).items()}
    context = {"settings": recorded, "environment": environment()}
    results = Results()
    groups: list[Group] = []
    interrupted = False
    with terminate_cleanly(settings.mount_root):
        try:
            datasets = prepare_datasets(settings)
            want_squashfs = any(r.image_kind == "squashfs" for r in readers)
            groups = prepare_groups(settings, datasets, want_squashfs, notes)
            measure(settings, groups, readers, results)
        except KeyboardInterrupt:
            say("interrupted: mounts are being cleaned up; partial results follow")
            notes.append("interrupted before the end: partial results")
            interrupted = True
        except RuntimeError as exc:  # an image could not be built
            say(f"bench_fuse: {exc}")
            return 1
    context["environment"]["loadavg_at_end"] = os.getloadavg()
    context["notes"] = notes
    print(render(results, groups, readers, settings.runs, notes))
    write_json(settings.json_path, as_json(results, groups, readers, context))
    say(f"raw samples and medians: {settings.json_path}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
