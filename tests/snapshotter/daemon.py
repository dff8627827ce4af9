"""The snapshotter daemon as its users run it, and a gRPC client for it (for tests and benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from snapshotter.proto_gen.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from snapshotter.proto_gen.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]


class SnapshotterProcess:
    """``erofs-snapshotter`` run as its users run it: a foreground process logging to stderr."""

    def __init__(self, root: Path, address: Path, mode: str, *extra: str) -> None:
        self.root, self.address = root, address
        self.args = ["--root", str(root), "--address", str(address), "--mode", mode, "--log-level", "debug", *extra]
        self.prefix: list[str] = []  # e.g. unshare, to run it in namespaces
        self.environment: dict[str, str] = {}  # added to this process's environment
        self.log = root.parent / f"{root.name}.log"
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def base_command() -> list[str]:
        return [sys.executable, "-m", "snapshotter.main"]

    def start(self) -> None:
        """Start and wait until it serves: the socket takes its name once it accepts connections (one that a
        killed process left behind is removed first, or it would look ready)."""
        self.address.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*self.prefix, *self.base_command(), *self.args], stdout=log, stderr=log,
                                         cwd=REPO, env={**os.environ, **self.environment})
        deadline = time.monotonic() + 30
        while not self.address.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"erofs-snapshotter did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit status (None if it was not running)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise

    def wait_killed(self, timeout: float = 30) -> int:
        """Wait for a process that is expected to die on its own (a fault point); returns its exit status."""
        assert self.proc is not None
        proc, self.proc = self.proc, None
        return proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a careless admin would."""
        assert self.proc is not None
        self.proc.kill()
        assert self.wait_killed() == -signal.SIGKILL

    def restart(self) -> None:
        assert self.stop() == 0, self.log.read_text()[-3000:]
        self.start()


class Client:
    """Thin calls on the Snapshots service, shaped like containerd's snapshots.Snapshotter."""

    def __init__(self, address: Path) -> None:
        # Calls made while the snapshotter is down put the channel in reconnect backoff, during which calls
        # fail at once with the last connect error; keep that backoff short, as a restart is part of the tests.
        self.channel = grpc.insecure_channel(f"unix://{address}", options=[
            ("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 200)])
        self.stub = pb_grpc.SnapshotsStub(self.channel)

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until the channel is connected again (after the snapshotter was restarted)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def close(self) -> None:
        self.channel.close()

    def prepare(self, key: str, parent: str = "", labels: dict | None = None):
        return self.stub.Prepare(pb.PrepareSnapshotRequest(key=key, parent=parent, labels=labels or {})).mounts

    def view(self, key: str, parent: str = "", labels: dict | None = None):
        return self.stub.View(pb.ViewSnapshotRequest(key=key, parent=parent, labels=labels or {})).mounts

    def mounts(self, key: str):
        return self.stub.Mounts(pb.MountsRequest(key=key)).mounts

    def commit(self, name: str, key: str, labels: dict | None = None, parent: str = "") -> None:
        self.stub.Commit(pb.CommitSnapshotRequest(name=name, key=key, labels=labels or {}, parent=parent))

    def remove(self, key: str) -> None:
        self.stub.Remove(pb.RemoveSnapshotRequest(key=key))

    def stat(self, key: str) -> pb.Info:
        return self.stub.Stat(pb.StatSnapshotRequest(key=key)).info

    def update(self, info: pb.Info, *paths: str) -> pb.Info:
        request = pb.UpdateSnapshotRequest(info=info)
        request.update_mask.paths.extend(paths)
        return self.stub.Update(request).info

    def walk(self, *filters: str) -> list[pb.Info]:
        return [info for batch in self.stub.List(pb.ListSnapshotsRequest(filters=filters)) for info in batch.info]

    def usage(self, key: str) -> pb.UsageResponse:
        return self.stub.Usage(pb.UsageRequest(key=key))

    def cleanup(self) -> None:
        self.stub.Cleanup(pb.CleanupRequest())
