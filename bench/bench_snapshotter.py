"""The EROFS snapshotter side by side with containerd's overlayfs snapshotter, in one containerd.

Builds (once, cached) an image of busybox plus a large tree (default: this Python installation, about
1 GB in 60,000 files) under /usr/local, then measures, as medians of several runs:

* import: ``ctr images import`` of the image into a fresh containerd, with overlayfs and with the EROFS
  snapshotter in kernel and in fuse mode (unpacking plus, for EROFS, building the layer blobs at commit);
* start + find: ``ctr run --rm IMAGE find /usr`` with overlayfs, EROFS in kernel mode and in fuse mode,
  and the peak RSS of the erofsfuse daemon serving the image.

Page caches are dropped before every timed step, so every step starts cold. Run as root:

    python bench/bench_snapshotter.py [--runs 3] [--source DIR] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fusebench.workloads import drop_caches  # noqa: E402

from tests.snapshotter import oci  # noqa: E402
from tests.snapshotter.containerd import Containerd  # noqa: E402
from tests.snapshotter.daemon import Client, SnapshotterProcess  # noqa: E402
from tests.snapshotter.mounting import unmount_below  # noqa: E402


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

    def __init__(self, base: Path, mode: str) -> None:
        base.mkdir(parents=True)
        self.base = base
        self.snapshotter = SnapshotterProcess(base / "snapshotter", base / "snapshotter.sock", mode)
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


def bench(args: argparse.Namespace) -> dict[str, list[float]]:
    args.workdir.mkdir(parents=True, exist_ok=True)
    image = build_image(args.workdir, args.source)
    ref = image.refs["root"]
    results: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)
        print(f"  {name}: {value:.2f}", flush=True)

    cases = [("overlayfs", "kernel"), ("erofs", "kernel"), ("erofs", "fuse")]
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", flush=True)
        for name, mode in cases[run % len(cases):] + cases[:run % len(cases)]:  # rotate the order
            label = name if name == "overlayfs" else f"erofs-{mode}"
            # A fresh containerd and snapshotter for every case: nothing left by another case (deletions,
            # writeback) runs during a measurement.
            stack = Stack(args.workdir / "stack", mode)
            ctr = stack.containerd.ctr
            try:
                record(f"import {label}", timed(ctr, "images", "import", "--snapshotter", name, str(image.archive),
                                                timeout=3600))
                stack.settle()
                with RssSampler(stack.snapshotter.root) as rss:
                    record(f"start+find {label}", timed(ctr, "run", "--rm", "--snapshotter", name, ref, "find",
                                                        "find", "/usr", timeout=3600))
                if mode == "fuse":
                    record("erofsfuse peak RSS MiB", rss.peak_kib / 1024)
            finally:
                stack.close()
    return results


def report(results: dict[str, list[float]]) -> None:
    med = {name: statistics.median(values) for name, values in results.items()}
    print()
    print(f"{'measure':<28}{'median':>10}{'runs':>8}{'vs overlayfs':>14}")
    for name, value in med.items():
        kind = name.split()[0]
        base = med.get(f"{kind} overlayfs")
        ratio = f"{value / base:.2f}x" if base and "overlayfs" not in name and "RSS" not in name else ""
        unit = "" if "RSS" in name else " s"
        print(f"{name:<28}{value:>8.2f}{unit:<2}{len(results[name]):>8}{ratio:>14}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--source", type=Path, default=Path(sys.base_prefix),
                        help="tree to put in the big layer (default: this Python installation)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/erofs-snapshotter-bench"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: it starts containerd and mounts layers")
    report(bench(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
