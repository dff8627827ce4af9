"""The README's first set-up command: mount the bundled sample and show it."""

from __future__ import annotations

import os
import subprocess
import sys

from erofsfuse.cli.sample import sample_image
from erofsfuse.erofs.image import ErofsImage


def test_sample_command_shows_the_image():
    proc = subprocess.run([sys.executable, "-m", "erofsfuse.cli.sample"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with ErofsImage(sample_image()) as img:
        for path, _ in img.walk():
            if path != b"/":
                assert os.path.basename(os.fsdecode(path)) in proc.stdout
        hello = img.read(img.resolve("/hello.txt"), 0, 4096).decode()
        comment = img.getxattr(img.resolve("/hello.txt"), b"user.comment").decode()
    assert hello in proc.stdout and comment in proc.stdout
    assert "unmounted" in proc.stdout
    mnt = next(line.split()[3] for line in proc.stdout.splitlines() if line.startswith("$ erofsfuse "))
    assert not os.path.exists(mnt)
