"""A private containerd (Debian's, with runc) for end-to-end tests: its own root, state, socket and a
``proxy_plugins`` entry for the snapshotter under test."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{address}"

[debug]
  level = "{log_level}"

[proxy_plugins]
  [proxy_plugins.erofs]
    type = "snapshot"
    address = "{snapshotter}"
"""


def available() -> str | None:
    """Why containerd end-to-end tests cannot run here, or None."""
    for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    return None


class Containerd:
    def __init__(self, base: Path, snapshotter_address: Path, log_level: str = "info") -> None:
        self.base = base
        self.address = base / "containerd.sock"
        self.log = base / "containerd.log"
        self.config = base / "config.toml"
        self.config.write_text(CONFIG.format(root=base / "root", state=base / "state", address=self.address,
                                             snapshotter=snapshotter_address, log_level=log_level))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["containerd", "--config", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start:\n{self.log.read_text()[-3000:]}")
            if self.address.exists() and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.1)

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ctr", "--address", str(self.address), "--namespace", "e2e", *args],
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                                 f"containerd log:\n{self.log.read_text()[-3000:]}")
        return proc

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
