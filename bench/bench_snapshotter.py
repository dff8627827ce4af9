"""The EROFS snapshotter side by side with containerd's overlayfs snapshotter, in one containerd.

Two images, built once and cached:

* big: busybox plus a large tree (default: this Python installation, about 1 GB in 60,000 files) under
  /usr/local, in two layers;
* deep: busybox plus ``--deep-layers`` - 1 layers (default 130 in all) that share a tree out between them
  (default /usr/share), each also deleting a file of the layer below (a whiteout).

and measures, as medians of several runs, each case in a fresh containerd:

* import: ``ctr images import`` with overlayfs and with the EROFS snapshotter in kernel mode and in fuse
  mode (unpacking plus, for EROFS, building the layer blobs at commit); the deep image also in kernel mode
  with its chain flattened (``--flatten-layers``) and layer by layer (``--flatten-layers 0``);
* start + find (big image): ``ctr run --rm IMAGE find /usr``, and the peak RSS of the erofsfuse daemon;
* first start, start (deep image): ``ctr run --rm IMAGE true`` twice: flattened, the first start builds the
  chain's fsmeta;
* fsmeta build: ``snapshotter.flatten.build_fsmeta`` of the deep image's chain from its layer blobs, per
  layer and per 10,000 files.

Page caches are dropped before every timed step, so every step starts cold. Run as root:

    python bench/bench_snapshotter.py [--runs 3] [--images big,deep] [--source DIR] [--deep-source DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fusebench.workloads import drop_caches  # noqa: E402

from erofsfuse.fuse.stackfile import StackFile, StackLayer  # noqa: E402
from snapshotter.flatten import build_fsmeta  # noqa: E402
from snapshotter.settings import FLATTEN_LAYERS  # noqa: E402
from tests.snapshotter import oci  # noqa: E402
from tests.snapshotter.containerd import Containerd  # noqa: E402
from tests.snapshotter.daemon import Client, SnapshotterProcess  # noqa: E402
from tests.snapshotter.deep import busybox_layer  # noqa: E402
from tests.snapshotter.mounting import unmount_below  # noqa: E402

DEEP_NAME = "docker.io/library/erofs-bench-deep"


def build_image(workdir: Path, source: Path) -> oci.Image:
    archive = workdir / "image.tar"
    chain_file = workdir / "image.chain"
    if archive.exists() and chain_file.exists():
        refs = {"root": "docker.io/library/erofs-bench:root"}
        return oci.Image(archive, refs, chain_file.read_text())
    print(f"building the image from {source} (once)...", flush=True)
    base = oci.Layer().dir("/bin").file("/bin/busybox", oci.BUSYBOX.read_bytes(), 0o755).dir("/usr")
    for applet in oci.APPLETS:
        base.symlink(f"/bin/{applet}", "busybox")
    layers = [base.write(workdir / "layer-0.tar"), workdir / "layer-1.tar"]
    with tarfile.open(layers[1], "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(source, arcname="usr/local/python")
    image = oci.build_archive(archive, layers, ["/bin/sh"], {"root": ""}, name="docker.io/library/erofs-bench")
    for layer in layers:
        layer.unlink()
    chain_file.write_text(image.chain_id)
    return image


def build_deep_image(workdir: Path, source: Path, layers: int) -> oci.Image:
    """busybox, then ``source``'s files in ``layers`` - 1 layers (in name order, each with its parent
    directories), every layer after the second deleting the first file of the layer below."""
    archive, chain_file = workdir / f"deep-{layers}.tar", workdir / f"deep-{layers}.chain"
    if archive.exists() and chain_file.exists():
        return oci.Image(archive, {"root": f"{DEEP_NAME}:root"}, chain_file.read_text())
    print(f"building the {layers}-layer image from {source} (once)...", flush=True)
    files = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file() or p.is_symlink())
    share = -(-len(files) // (layers - 1))
    tars = [busybox_layer().write(workdir / "deep-000.tar")]
    for index in range(layers - 1):
        chunk = files[index * share:(index + 1) * share]
        tars.append(workdir / f"deep-{index + 1:03d}.tar")
        with tarfile.open(tars[-1], "w", format=tarfile.PAX_FORMAT) as tar:
            dirs: set[str] = set()
            for rel in chunk:
                parts = Path("deep", rel).parts
                for depth in range(1, len(parts)):
                    parent = "/".join(parts[:depth])
                    if parent not in dirs:
                        dirs.add(parent)
                        tar.add(source / Path(*parts[1:depth]), arcname=parent, recursive=False)
                tar.add(source / rel, arcname=f"deep/{rel}", recursive=False)
            below = files[(index - 1) * share:index * share] if index else []
            if below:
                parent, _, name = f"deep/{below[0]}".rpartition("/")
                tar.addfile(tarfile.TarInfo(f"{parent}/.wh.{name}"))
    image = oci.build_archive(archive, tars, ["/bin/sh"], {"root": ""}, name=DEEP_NAME)
    for tar in tars:
        tar.unlink()
    chain_file.write_text(image.chain_id)
    return image


class RssSampler:
    """Peak resident memory of the erofsfuse daemons serving ``root`` while it runs."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                    if b"erofsfuse" not in cmdline or self.root.encode() not in cmdline:
                        continue
                    for line in (proc / "status").read_text().splitlines():
                        if line.startswith("VmHWM:"):  # the peak so far, never below the current RSS
                            self.peak_kib = max(self.peak_kib, int(line.split()[1]))
                except OSError:
                    continue


class Stack:
    """containerd with the EROFS snapshotter as proxy plugin ``erofs``, both on fresh roots."""

    def __init__(self, base: Path, mode: str, *extra: str) -> None:
        base.mkdir(parents=True)
        self.base = base
        self.snapshotter = SnapshotterProcess(base / "snapshotter", base / "snapshotter.sock", mode, *extra)
        self.snapshotter.args[self.snapshotter.args.index("debug")] = "info"
        self.snapshotter.start()
        self.containerd = Containerd(base, self.snapshotter.address)
        self.containerd.start()

    def settle(self) -> None:
        """Let the snapshotter finish deleting emptied upper dirs (background work after commit)."""
        client = Client(self.snapshotter.address)
        client.cleanup()
        client.close()

    def close(self) -> None:
        self.containerd.stop()
        self.snapshotter.stop()
        unmount_below(self.base)
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.base)], check=False)


def timed(call, *args, **kwargs) -> float:
    """Seconds ``call(*args, **kwargs)`` takes, starting with cold caches."""
    drop_caches()
    start = time.monotonic()
    call(*args, **kwargs)
    return time.monotonic() - start


def chain_blobs(root: Path, chain_id: str) -> list[str]:
    """The layer blobs of the committed chain named ``chain_id`` in a snapshotter's records, bottom first."""
    with contextlib.closing(sqlite3.connect(f"file:{root / 'metadata.db'}?mode=ro", uri=True)) as db:
        parents = dict(db.execute("SELECT id, parent_id FROM snapshots"))
        (top,) = [sid for sid, key in db.execute("SELECT id, key FROM snapshots") if key.endswith(f"/{chain_id}")]
    chain = [top]
    while parents[chain[-1]] is not None:
        chain.append(parents[chain[-1]])
    return [str(root / "snapshots" / str(i) / "layer.erofs") for i in reversed(chain)]


def bench_fsmeta(blobs: list[str], record) -> None:
    """Time one fsmeta build of the chain, with the layers' metadata cold."""
    with tempfile.TemporaryDirectory(prefix="fsmeta-") as tmp:
        drop_caches()
        start = time.monotonic()
        built = build_fsmeta(StackFile(tuple(StackLayer(b) for b in blobs)), Path(tmp) / "fsmeta.erofs")
        spent = time.monotonic() - start
    record("fsmeta build s", spent)
    record("fsmeta ms per layer", spent * 1000 / len(blobs))
    record("fsmeta s per 10k files", spent * 10_000 / built.files)


# (snapshotter, label, mode, extra arguments) of each case
CASES = {
    "big": [("overlayfs", "overlayfs", "kernel", ()), ("erofs", "erofs-kernel", "kernel", ()),
            ("erofs", "erofs-fuse", "fuse", ())],
    "deep": [("overlayfs", "overlayfs", "kernel", ()),
             ("erofs", "erofs-kernel", "kernel", ("--flatten-layers", "0")),
             ("erofs", "erofs-flattened", "kernel", ("--flatten-layers", str(FLATTEN_LAYERS))),
             ("erofs", "erofs-fuse", "fuse", ())],
}


def bench(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    args.workdir.mkdir(parents=True, exist_ok=True)
    images = {"big": lambda: build_image(args.workdir, args.source),
              "deep": lambda: build_deep_image(args.workdir, args.deep_source, args.deep_layers)}
    results: dict[str, dict[str, list[float]]] = {}
    for which in args.images:
        image = images[which]()
        ref = image.refs["root"]
        found = results[which] = {}

        def record(name: str, value: float, found=found) -> None:
            found.setdefault(name, []).append(value)
            print(f"  {name}: {value:.2f}", flush=True)

        cases = CASES[which]
        for run in range(args.runs):
            print(f"{which} image, run {run + 1}/{args.runs}", flush=True)
            for name, label, mode, extra in cases[run % len(cases):] + cases[:run % len(cases)]:  # rotate the order
                # A fresh containerd and snapshotter for every case: nothing left by another case (deletions,
                # writeback) runs during a measurement.
                stack = Stack(args.workdir / "stack", mode, *extra)
                ctr = stack.containerd.ctr
                try:
                    record(f"import {label}", timed(ctr, "images", "import", "--snapshotter", name,
                                                    str(image.archive), timeout=3600))
                    stack.settle()
                    if which == "deep":
                        for step in ("first start", "start"):
                            record(f"{step} {label}", timed(ctr, "run", "--rm", "--snapshotter", name, ref, "true",
                                                            "/bin/sh", "-c", "true", timeout=3600))
                        if label == "erofs-flattened":
                            bench_fsmeta(chain_blobs(stack.snapshotter.root, image.chain_id), record)
                        continue
                    with RssSampler(stack.snapshotter.root) as rss:
                        record(f"start+find {label}", timed(ctr, "run", "--rm", "--snapshotter", name, ref, "find",
                                                            "find", "/usr", timeout=3600))
                    if mode == "fuse":
                        record("erofsfuse peak RSS MiB", rss.peak_kib / 1024)
                finally:
                    stack.close()
    return results


def report(all_results: dict[str, dict[str, list[float]]]) -> None:
    for which, results in all_results.items():
        med = {name: statistics.median(values) for name, values in results.items()}
        print()
        print(f"{which + ' image':<32}{'median':>10}{'runs':>8}{'vs overlayfs':>14}")
        for name, value in med.items():
            kind = name.rpartition(" ")[0]
            base = med.get(f"{kind} overlayfs")
            ratio = f"{value / base:.2f}x" if base and "overlayfs" not in name else ""
            unit = " s" if name.split()[0] in ("import", "start", "first", "start+find") else ""
            print(f"{name:<32}{value:>8.2f}{unit:<2}{len(results[name]):>8}{ratio:>14}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--source", type=Path, default=Path(sys.base_prefix),
                        help="tree to put in the big layer (default: this Python installation)")
    parser.add_argument("--deep-source", type=Path, default=Path("/usr/share"),
                        help="tree to share out between the deep image's layers (default /usr/share)")
    parser.add_argument("--deep-layers", type=int, default=130, help="layers of the deep image (default 130)")
    parser.add_argument("--images", type=lambda s: s.split(","), default=["big", "deep"],
                        help="which images to measure: big, deep or both (default big,deep)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/erofs-snapshotter-bench"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: it starts containerd and mounts layers")
    report(bench(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
