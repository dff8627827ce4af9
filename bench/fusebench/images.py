"""Images of the benchmark data: EROFS with the installed mkfs.erofs, squashfs with mksquashfs.

Each EROFS format is paired with the closest squashfs settings (same
compressor family, 64 KiB blocks to match ``-C65536``), so squashfuse
reads comparable data. Formats the installed tools cannot write are
probed with a tiny image and skipped with a note instead of failing.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .datagen import DataSet


@dataclass(frozen=True)
class Format:
    """One compression setting, as mkfs.erofs and mksquashfs spell it."""

    name: str
    erofs_args: tuple[str, ...]
    squashfs_args: tuple[str, ...]

    def describe(self, kinds: tuple[str, ...] = ("erofs", "squashfs")) -> str:
        """The image recipes, e.g. for a table heading."""
        recipes = {"erofs": f"mkfs.erofs {' '.join(self.erofs_args) or '(no compression)'}",
                   "squashfs": f"mksquashfs {' '.join(self.squashfs_args)}"}
        return "; ".join(recipes[kind] for kind in kinds)


SQUASHFS_UNCOMPRESSED = ("-noI", "-noId", "-noD", "-noF", "-noX")
FORMATS = {
    fmt.name: fmt
    for fmt in (
        Format("plain", (), SQUASHFS_UNCOMPRESSED),
        Format("lz4", ("-zlz4", "-C65536"), ("-comp", "lz4", "-b", "65536")),
        Format("lz4hc", ("-zlz4hc", "-C65536"), ("-comp", "lz4", "-Xhc", "-b", "65536")),
        Format("zstd", ("-zzstd", "-C65536"), ("-comp", "zstd", "-b", "65536")),
        Format("lzma", ("-zlzma", "-C65536"), ("-comp", "xz", "-b", "65536")),
        Format("deflate", ("-zdeflate", "-C65536"), ("-comp", "gzip", "-b", "65536")),
    )
}
DEFAULT_FORMATS = ("plain", "lz4", "lz4hc", "zstd", "lzma", "deflate")


@dataclass(frozen=True)
class Image:
    """One image file of one data set in one format."""

    path: Path
    kind: str  # "erofs" or "squashfs"
    dataset: DataSet
    format: Format

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def erofs_command(fmt: Format, image: Path, source: Path) -> list[str]:
    return ["mkfs.erofs", "--quiet", *fmt.erofs_args, str(image), str(source)]


def squashfs_command(fmt: Format, image: Path, source: Path) -> list[str]:
    return ["mksquashfs", str(source), str(image), "-noappend", "-no-progress", "-quiet", *fmt.squashfs_args]


BUILDERS = {"erofs": erofs_command, "squashfs": squashfs_command}  # image kind -> its build command


def run_tool(command: list[str]) -> str | None:
    """Run an image builder; the first lines of its complaint when it fails."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return f"{command[0]} is not installed"
    if done.returncode == 0:
        return None
    message = (done.stderr or done.stdout).strip().splitlines()
    return f"{command[0]} failed ({done.returncode}): {message[0] if message else 'no message'}"


def probe(kind: str, fmt: Format, scratch: Path) -> str | None:
    """Why the installed tool cannot write ``fmt`` (None when it can), tried on a tiny tree."""
    source = scratch / "probe-source"
    source.mkdir(parents=True, exist_ok=True)
    (source / "probe.txt").write_bytes(b"probe " * 4096)
    image = scratch / f"probe.{fmt.name}.{kind}"
    image.unlink(missing_ok=True)
    problem = run_tool(BUILDERS[kind](fmt, image, source))
    image.unlink(missing_ok=True)
    return problem


def image_path(kind: str, fmt: Format, dataset: DataSet, image_dir: Path) -> Path:
    return image_dir / f"{dataset.key}.{fmt.name}.{kind}"


def recipe(kind: str, fmt: Format, dataset: DataSet) -> str:
    """The build command with relative names: stored beside the image, so a changed recipe rebuilds it."""
    return " ".join(BUILDERS[kind](fmt, Path(f"{dataset.key}.{fmt.name}.{kind}"), Path(dataset.key)))


def is_built(kind: str, fmt: Format, dataset: DataSet, image_dir: Path) -> bool:
    path = image_path(kind, fmt, dataset, image_dir)
    recipe_file = path.with_name(path.name + ".cmd")
    return path.exists() and recipe_file.exists() and recipe_file.read_text() == recipe(kind, fmt, dataset)


def build_image(kind: str, fmt: Format, dataset: DataSet, image_dir: Path) -> Image:
    """Make the image unless it is already there, built the same way."""
    path = image_path(kind, fmt, dataset, image_dir)
    if is_built(kind, fmt, dataset, image_dir):
        return Image(path, kind, dataset, fmt)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    problem = run_tool(BUILDERS[kind](fmt, partial, dataset.path))
    if problem:
        raise RuntimeError(f"building {path.name}: {problem}")
    partial.rename(path)
    path.with_name(path.name + ".cmd").write_text(recipe(kind, fmt, dataset))
    return Image(path, kind, dataset, fmt)


def tool_versions() -> dict[str, str]:
    """Versions of the image builders, for the record."""
    versions = {}
    for tool, args in (("mkfs.erofs", ["-V"]), ("mksquashfs", ["-version"])):
        if shutil.which(tool) is None:
            continue
        done = subprocess.run([tool, *args], capture_output=True, text=True, check=False)
        lines = done.stdout.strip().splitlines()  # both print the version first on stdout, even on bad usage
        versions[tool] = lines[0] if lines else "unknown"
    return versions
