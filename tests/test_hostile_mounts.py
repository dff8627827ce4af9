"""Mounts of mutated images: every operation answers (data or an errno), and the daemon stays up."""

from __future__ import annotations

import functools
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from . import corpus, fuzzing
from .fusemount import daemon_pids, erofsfuse_command, is_mounted, unmount

REPO = str(Path(__file__).resolve().parent.parent)
WALK = """
import errno, hashlib, json, os, sys
root = sys.argv[1]
counts = {}
def note(exc):
    key = errno.errorcode.get(exc.errno, str(exc.errno))
    counts[key] = counts.get(key, 0) + 1
def visit(path, depth):
    try:
        st = os.lstat(path)
        names = os.listdir(path) if os.path.isdir(path) and not os.path.islink(path) else []
    except OSError as exc:
        note(exc); return
    ops = [lambda: os.listxattr(path, follow_symlinks=False)]
    if os.path.islink(path):
        ops.append(lambda: os.readlink(path))
    for op in ops:
        try: op()
        except OSError as exc: note(exc)
    if os.path.isfile(path) and not os.path.islink(path):
        try:
            with open(path, "rb") as f:
                while f.read(1 << 20): pass
        except OSError as exc: note(exc)
    for name in names[:200]:
        if depth < 40:
            visit(os.path.join(path, name), depth + 1)
visit(root, 0)
print(json.dumps(counts))
"""


@functools.cache
def mutated_images(count: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    plain = [seed for seed in fuzzing.seeds() if not corpus.device_paths(seed[0])]
    out = []
    for i in range(count):
        name, original, ranges = plain[i % len(plain)]
        data = bytearray(original)
        for _ in range(rng.randrange(3, 12)):
            fuzzing.mutate(data, ranges[1:], rng)  # past the superblock: a broken one is refused at mount
        out.append((name, bytes(data)))
    return out


@pytest.mark.parametrize("case", range(24))
def test_walking_a_mutated_mount_never_hangs_or_kills_the_daemon(tmp_path, case):
    name, data = mutated_images(24, seed=7)[case]
    image = tmp_path / f"{name}-mutated.erofs"
    image.write_bytes(data)
    log = tmp_path / "daemon.log"
    with tempfile.TemporaryDirectory(prefix="efuse-hostile-") as mnt:
        proc = subprocess.run(erofsfuse_command(str(image), mnt, options=[f"log={log}"]), capture_output=True,
                              text=True, timeout=60)
        if proc.returncode:
            # refused at mount time: one clear line, no traceback
            assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert not is_mounted(mnt)
            return
        try:
            pids = daemon_pids(mnt)
            assert len(pids) == 1
            walk = subprocess.run([sys.executable, "-c", WALK, mnt], capture_output=True, text=True, timeout=120)
            assert walk.returncode == 0, walk.stderr
            errors = json.loads(walk.stdout)
            assert set(errors) <= {"EIO", "ENOENT", "ENOTDIR", "ENODATA", "ESTALE", "EOPNOTSUPP", "ENOTSUP",
                                   "ENAMETOOLONG", "ELOOP", "EACCES"}, errors
            assert daemon_pids(mnt) == pids, "the daemon must survive every request"
            assert "Traceback" not in (log.read_text() if log.exists() else ""), "no unexpected exception"
        finally:
            unmount(mnt)
        assert not is_mounted(mnt)
