"""The committed gRPC stubs are what the pinned grpcio-tools makes of the .proto files, and they speak
containerd's wire names."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from snapshotter.proto_gen.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from tests.snapshotter.daemon import REPO


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools is not installed")
def test_committed_stubs_are_fresh() -> None:
    proc = subprocess.run([sys.executable, "snapshotter/proto/generate.py", "--check"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_service_and_message_names_are_containerds() -> None:
    service = pb.DESCRIPTOR.services_by_name["Snapshots"]
    assert service.full_name == "containerd.services.snapshots.v1.Snapshots"
    assert sorted(m.name for m in service.methods) == sorted(
        ["Prepare", "View", "Mounts", "Commit", "Remove", "Stat", "Update", "List", "Usage", "Cleanup"])
    assert service.methods_by_name["List"].server_streaming
    mount = pb.PrepareSnapshotResponse.DESCRIPTOR.fields_by_name["mounts"].message_type
    assert mount.full_name == "containerd.types.Mount"
    assert {f.name: f.number for f in mount.fields} == {"type": 1, "source": 2, "target": 3, "options": 4}
