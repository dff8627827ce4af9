"""The shared EROFS image corpus: images made by the newest mkfs.erofs, with kernel manifests.

It is found at ``../shared/corpus`` beside the repository, or where ``EROFS_CORPUS`` says. Without it the
suite still collects: the lists of images are empty and the tests that read the corpus are skipped.
"""

from __future__ import annotations

import gzip
import json
import os
from functools import cache
from pathlib import Path

CORPUS = Path(os.environ.get("EROFS_CORPUS") or Path(__file__).resolve().parents[2] / "shared" / "corpus").resolve()


def missing() -> str | None:
    """Why the corpus cannot be read, or None."""
    if not (CORPUS / "index.json").is_file():
        return f"no EROFS test corpus at {CORPUS} (set EROFS_CORPUS to its directory)"
    return None


@cache
def index() -> dict:
    """The corpus index; an empty one when the corpus is missing, so that collection goes on."""
    if missing():
        return {"images": []}
    return json.loads((CORPUS / "index.json").read_text())


def images() -> list[dict]:
    """Every image entry of the corpus index."""
    return index()["images"]


def image_names(predicate=lambda entry: True) -> list[str]:
    return [entry["name"] for entry in images() if predicate(entry)]


def entry(name: str) -> dict:
    return next(e for e in images() if e["name"] == name)


@cache
def manifest(name: str) -> dict:
    with gzip.open(CORPUS / f"{name}.manifest.json.gz") as f:
        return json.load(f)


def image_path(name: str) -> str:
    """Where image ``name`` is; without the corpus, where it would be (a module may name it at import)."""
    if missing():
        return str(CORPUS / f"{name}.erofs")
    return str(CORPUS / entry(name)["image"])


def device_paths(name: str) -> list[str]:
    return [str(CORPUS / dev) for dev in entry(name)["devices"]]


def is_compressed(e: dict) -> bool:
    """Whether an image stores compressed data (a ``-z`` option or a compressed metabox)."""
    return any(arg.startswith("-z") or arg.startswith("-m") for arg in e["mkfs_args"])


def stack_file(directory: str | os.PathLike, names: list[str]) -> str:
    """A stack file (bottom layer first) of corpus images, written in ``directory``."""
    layers = [{"image": image_path(n), "devices": device_paths(n)} for n in names]
    path = Path(directory) / "stack.json"
    path.write_text(json.dumps({"layers": layers, "comment": "bottom layer first"}))
    return str(path)
