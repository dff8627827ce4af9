"""Mount the bundled sample image with erofsfuse, show what is inside, unmount.

``python -m erofsfuse.cli.sample [IMAGE]``: a first look at the main job, run by
the README's first set-up command. Works as root or as a user that may use
FUSE.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import time
from importlib import resources


def sample_image() -> str:
    return str(resources.files("erofsfuse") / "data" / "sample.erofs")


def show_tree(path: str, depth: int = 0) -> None:
    """An ``ls -l``-like listing of the whole tree, each directory followed by its contents."""
    for name in sorted(os.listdir(path)):
        child = os.path.join(path, name)
        st = os.lstat(child)
        line = f"{stat.filemode(st.st_mode)} {st.st_uid:>5} {st.st_size:>8}  {'    ' * depth}{name}"
        if stat.S_ISLNK(st.st_mode):
            line += f" -> {os.readlink(child)}"
        print(line)
        if stat.S_ISDIR(st.st_mode):
            show_tree(child, depth + 1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    image = args[0] if args else sample_image()
    with tempfile.TemporaryDirectory(prefix="erofsfuse-sample-") as mnt:
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "erofsfuse.cli.mount", image, mnt], check=True)
        try:
            print(f"$ erofsfuse {image} {mnt}    # mounted in {time.monotonic() - started:.2f} s")
            with open("/proc/self/mounts") as mounts:
                print("".join(line for line in mounts if line.split()[1] == mnt), end="")
            print(f"\n$ ls -lR {mnt}")
            show_tree(mnt)
            for name in ("README", "hello.txt"):
                path = os.path.join(mnt, name)
                if os.path.isfile(path):
                    print(f"\n$ cat {name}")
                    with open(path) as f:
                        print(f.read(), end="")
                    for attr in os.listxattr(path):
                        print(f"# xattr {attr} = {os.getxattr(path, attr).decode(errors='replace')}")
        finally:
            subprocess.run(["fusermount3", "-u", mnt], check=True)
            print(f"\n$ fusermount3 -u {mnt}    # unmounted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
