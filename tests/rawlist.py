"""Directory listings exactly as readdir(3) returns them (name, d_type, d_ino), with no stat.

Run as its own process, so that a FUSE daemon sees a caller with no history:

    python -m tests.rawlist walk:DIR list:DIR lstat:PATH ...

Steps run in order; ``walk`` lists DIR and every subdirectory (recognised by
d_type alone), ``list`` one directory, ``lstat`` stats one path. Prints one JSON
object: for each walk or list, ``{directory: [[name, d_type, d_ino], ...]}``.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

DT_DIR = 4
REPO = str(Path(__file__).resolve().parent.parent)


class Dirent64(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64), ("d_reclen", ctypes.c_ushort),
                ("d_type", ctypes.c_ubyte), ("d_name", ctypes.c_char * 256)]


libc = ctypes.CDLL(None, use_errno=True)
libc.opendir.restype = ctypes.c_void_p
libc.opendir.argtypes = [ctypes.c_char_p]
libc.readdir64.restype = ctypes.POINTER(Dirent64)
libc.readdir64.argtypes = [ctypes.c_void_p]
libc.closedir.argtypes = [ctypes.c_void_p]


def listing(path: str) -> list[tuple[str, int, int]]:
    """Every entry readdir(3) returns, in its order; a failed readdir raises (it does not end the listing)."""
    handle = libc.opendir(os.fsencode(path))
    if not handle:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    try:
        out = []
        while True:
            ctypes.set_errno(0)
            entry = libc.readdir64(handle)
            if not entry:
                if err := ctypes.get_errno():
                    raise OSError(err, os.strerror(err), path)
                return out
            out.append((os.fsdecode(entry.contents.d_name), entry.contents.d_type, entry.contents.d_ino))
    finally:
        libc.closedir(handle)


def walk(path: str, into: dict) -> None:
    entries = into[path] = listing(path)
    for name, d_type, _ in entries:
        if d_type == DT_DIR and name not in (".", ".."):
            walk(os.path.join(path, name), into)


def main(steps: list[str]) -> None:
    out: dict[str, list] = {}
    for step in steps:
        verb, _, path = step.partition(":")
        if verb == "walk":
            walk(path, out)
        elif verb == "list":
            out[path] = listing(path)
        elif verb == "lstat":
            os.lstat(path)
        else:
            raise SystemExit(f"unknown step {step!r}")
    json.dump(out, sys.stdout)


def in_new_process(*steps: str) -> dict[str, list]:
    """Run the steps in a new process (a caller a FUSE daemon has never seen); its listings by directory."""
    done = subprocess.run([sys.executable, "-m", "tests.rawlist", *steps], cwd=REPO, capture_output=True,
                          check=True, timeout=300)
    return json.loads(done.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
