"""Collected samples, their medians and ratios to the kernel, as a table and as JSON."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .datagen import DataSet, MiB
from .images import Format, Image
from .readers import KERNEL, Reader
from .workloads import MEASUREMENTS, PER_DATASET, Measurement


@dataclass
class Group:
    """One data set in one format: an EROFS image and, when built, its squashfs counterpart."""

    dataset: DataSet
    format: Format
    images: dict[str, Image]  # by kind: "erofs", "squashfs"

    @property
    def key(self) -> str:
        return f"{self.dataset.kind}/{self.format.name}"

    def title(self) -> str:
        what = (f"{self.dataset.total_bytes / MiB:.0f} MiB file" if self.dataset.kind == "bigfile"
                else f"{self.dataset.files} small files, {self.dataset.total_bytes / MiB:.0f} MiB")
        sizes = ", ".join(f"{kind} image {image.size / MiB:.1f} MiB" for kind, image in self.images.items())
        recipes = self.format.describe(tuple(self.images))
        return f"{self.dataset.kind} ({what}) · {self.format.name} · {sizes}\n  {recipes}"


@dataclass
class Results:
    """Every sample, keyed by (group, reader, measurement), plus what went wrong along the way."""

    samples: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    errors: list[dict[str, object]] = field(default_factory=list)

    def add(self, group: Group, reader: str, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.samples.setdefault((group.key, reader, key), []).append(value)

    def add_error(self, group: Group, reader: str, run: int, message: str) -> None:
        self.errors.append({"group": group.key, "reader": reader, "run": run, "error": message})

    def median(self, group: Group, reader: str, key: str) -> float | None:
        values = self.samples.get((group.key, reader, key))
        return statistics.median(values) if values else None

    def ratio(self, group: Group, reader: str, key: str) -> float | None:
        """Reader's median over the kernel's, on the same image (for squashfuse: the same data)."""
        ours, kernel = self.median(group, reader, key), self.median(group, KERNEL, key)
        if ours is None or not kernel:
            return None
        return ours / kernel


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def cell(results: Results, group: Group, reader: Reader, measurement: Measurement) -> str:
    value = results.median(group, reader.name, measurement.key)
    if value is None:
        failed = any(e["group"] == group.key and e["reader"] == reader.name for e in results.errors)
        return "error" if failed else "-"
    if reader.name == KERNEL:
        return number(value)
    ratio = results.ratio(group, reader.name, measurement.key)
    return number(value) + (f" ({ratio:.3g}x)" if ratio is not None else "")


def group_table(results: Results, group: Group, readers: list[Reader]) -> list[str]:
    present = [r for r in readers if r.image_kind in group.images]
    header = ["measurement", "unit", "better", *(r.name for r in present)]
    rows = [header]
    for measurement in PER_DATASET[group.dataset.kind]:
        better = "higher" if measurement.higher_is_better else "lower"
        rows.append([measurement.label, measurement.unit, better,
                     *(cell(results, group, r, measurement) for r in present)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [group.title()]
    for index, row in enumerate(rows):
        left = [row[i].ljust(widths[i]) for i in range(3)]
        right = [row[i].rjust(widths[i]) for i in range(3, len(row))]
        lines.append("  " + "  ".join(left + right))
        if index == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def render(results: Results, groups: list[Group], readers: list[Reader], runs: int, notes: list[str]) -> str:
    """The whole report: a legend, one table per group, notes and errors."""
    lines = [
        f"Medians of {runs} interleaved runs. Non-kernel cells: median (reader / kernel on the same image;",
        "for squashfuse, its squashfs of the same data). The 'better' column says which way is better",
        "for both the value and the ratio: higher for MB/s and reads/s, lower for times and memory.",
        "MB = 10^6 bytes; cold = page, dentry and inode caches dropped just before (the image file's too).",
        "",
    ]
    lines += [f"  {r.name}: {r.description}" for r in readers]
    for group in groups:
        lines += ["", *group_table(results, group, readers)]
    if notes:
        lines += ["", "Notes:", *(f"  - {note}" for note in notes)]
    if results.errors:
        lines += ["", "Errors:"]
        lines += [f"  - run {e['run']} {e['group']} {e['reader']}: {e['error']}" for e in results.errors]
    return "\n".join(lines)


def as_json(results: Results, groups: list[Group], readers: list[Reader], context: dict[str, object]) -> dict:
    """Raw samples, medians and ratios, with the images and environment they came from."""
    rows = []
    for group in groups:
        for reader in readers:
            image = group.images.get(reader.image_kind)
            for measurement in PER_DATASET[group.dataset.kind]:
                samples = results.samples.get((group.key, reader.name, measurement.key))
                if image is None or not samples:
                    continue
                rows.append({
                    "dataset": group.dataset.kind, "format": group.format.name, "reader": reader.name,
                    "image": str(image.path), "measurement": measurement.key, "label": measurement.label,
                    "unit": measurement.unit, "higher_is_better": measurement.higher_is_better,
                    "samples": samples, "median": results.median(group, reader.name, measurement.key),
                    "ratio_to_kernel": results.ratio(group, reader.name, measurement.key),
                })
    images = [{"dataset": g.dataset.kind, "format": g.format.name, "kind": kind, "path": str(image.path),
               "bytes": image.size, "recipe": g.format.describe((kind,)), "data": str(g.dataset.path)}
              for g in groups for kind, image in g.images.items()]
    readers_info = {r.name: r.description for r in readers}
    return {**context, "readers": readers_info, "images": images, "results": rows, "errors": results.errors,
            "measurements": {k: m.label for k, m in MEASUREMENTS.items()}}


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".partial")
    scratch.write_text(json.dumps(document, indent=2) + "\n")
    scratch.rename(path)
