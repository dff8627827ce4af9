"""The gRPC edge: containerd.services.snapshots.v1.Snapshots over a unix socket.

Requests are validated here, the snapshotter's typed errors become gRPC status codes here and nowhere
else, and records become protobuf messages here.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from .core import Snapshotter
from .errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SnapshotterError,
)
from .metadata import Snapshot
from .planner import MountSpec
from .proto_gen.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from .proto_gen.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from .proto_gen.containerd.types import mount_pb2

log = logging.getLogger(__name__)

STATUS_CODES: dict[type[SnapshotterError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
}
LABEL_MAX_BYTES = 4096  # key plus value, as containerd validates labels
LIST_BATCH = 100  # snapshots per streamed List message


def status_code(exc: SnapshotterError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def _rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a handler, turning typed errors into the matching status (anything else is INTERNAL)."""

    @functools.wraps(method)
    def handler(self: SnapshotsService, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except SnapshotterError as exc:
            code = status_code(exc)
            log.log(logging.ERROR if code is grpc.StatusCode.INTERNAL else logging.DEBUG, "%s: %s: %s",
                    method.__name__, code.name, exc)
            context.abort(code, str(exc))
        except Exception as exc:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    return handler


def _key(value: str, what: str = "key") -> str:
    """Keys are opaque data (``default/7/name``, even ``../../etc``); only empty or NUL-bearing ones are refused."""
    if not value:
        raise InvalidArgument(f"{what} must not be empty")
    if "\0" in value:
        raise InvalidArgument(f"{what} must not contain NUL")
    return value


def _labels(labels: Mapping[str, str]) -> dict[str, str]:
    for k, v in labels.items():
        size = len(k.encode()) + len(v.encode())
        if size > LABEL_MAX_BYTES:
            raise InvalidArgument(f"label {k[:64]!r}: key and value are {size} bytes, more than {LABEL_MAX_BYTES}")
        if "\0" in k or "\0" in v:
            raise InvalidArgument(f"label {k[:64]!r} contains NUL")
    return dict(labels)


def _parent(value: str) -> str:
    return _key(value, "parent") if value else ""


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def info_message(snap: Snapshot) -> pb.Info:
    return pb.Info(name=snap.key, parent=snap.parent, kind=int(snap.kind), created_at=_timestamp(snap.created_ns),
                   updated_at=_timestamp(snap.updated_ns), labels=snap.labels)


def mount_messages(specs: list[MountSpec]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options)) for m in specs]


class SnapshotsService(pb_grpc.SnapshotsServicer):
    def __init__(self, snapshotter: Snapshotter) -> None:
        self.snapshotter = snapshotter

    @_rpc
    def Prepare(self, request: pb.PrepareSnapshotRequest, context: grpc.ServicerContext) -> pb.PrepareSnapshotResponse:
        mounts = self.snapshotter.prepare(_key(request.key), _parent(request.parent), _labels(request.labels))
        return pb.PrepareSnapshotResponse(mounts=mount_messages(mounts))

    @_rpc
    def View(self, request: pb.ViewSnapshotRequest, context: grpc.ServicerContext) -> pb.ViewSnapshotResponse:
        mounts = self.snapshotter.view(_key(request.key), _parent(request.parent), _labels(request.labels))
        return pb.ViewSnapshotResponse(mounts=mount_messages(mounts))

    @_rpc
    def Mounts(self, request: pb.MountsRequest, context: grpc.ServicerContext) -> pb.MountsResponse:
        return pb.MountsResponse(mounts=mount_messages(self.snapshotter.mounts(_key(request.key))))

    @_rpc
    def Commit(self, request: pb.CommitSnapshotRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.snapshotter.commit(_key(request.name, "name"), _key(request.key), _labels(request.labels),
                                _parent(request.parent))
        return empty_pb2.Empty()

    @_rpc
    def Remove(self, request: pb.RemoveSnapshotRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.snapshotter.remove(_key(request.key))
        return empty_pb2.Empty()

    @_rpc
    def Stat(self, request: pb.StatSnapshotRequest, context: grpc.ServicerContext) -> pb.StatSnapshotResponse:
        return pb.StatSnapshotResponse(info=info_message(self.snapshotter.stat(_key(request.key))))

    @_rpc
    def Update(self, request: pb.UpdateSnapshotRequest, context: grpc.ServicerContext) -> pb.UpdateSnapshotResponse:
        updated = self.snapshotter.update(_key(request.info.name, "info.name"), _labels(request.info.labels),
                                          list(request.update_mask.paths))
        return pb.UpdateSnapshotResponse(info=info_message(updated))

    def List(self, request: pb.ListSnapshotsRequest,
             context: grpc.ServicerContext) -> Iterator[pb.ListSnapshotsResponse]:
        infos = self._list(request, context)
        for start in range(0, len(infos), LIST_BATCH):
            yield pb.ListSnapshotsResponse(info=infos[start:start + LIST_BATCH])

    @_rpc
    def _list(self, request: pb.ListSnapshotsRequest, context: grpc.ServicerContext) -> list[pb.Info]:
        return [info_message(s) for s in self.snapshotter.list(list(request.filters))]

    @_rpc
    def Usage(self, request: pb.UsageRequest, context: grpc.ServicerContext) -> pb.UsageResponse:
        usage = self.snapshotter.usage(_key(request.key))
        return pb.UsageResponse(size=usage.size, inodes=usage.inodes)

    @_rpc
    def Cleanup(self, request: pb.CleanupRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.snapshotter.cleanup()
        return empty_pb2.Empty()


SOCKET_MODE = 0o600  # only root talks to the snapshotter
GROUP_SOCKET_MODE = 0o660  # ... and, when one is configured, the socket's group


def serve(snapshotter: Snapshotter, address: Path, workers: int = 8, group: int | None = None) -> grpc.Server:
    """Listen on the unix socket ``address`` (replacing a stale one) and start serving.

    The socket is bound under a temporary name with its final mode (no moment when the umask decides who
    may connect): 0600, or 0660 owned by ``group``; it takes its name once it accepts connections, so
    whoever sees the socket can use it. A directory made for it is as closed as the socket.
    """
    mode = SOCKET_MODE if group is None else GROUP_SOCKET_MODE
    if not address.parent.is_dir():
        address.parent.mkdir(parents=True, mode=0o700 if group is None else 0o710)
        if group is not None:
            os.chown(address.parent, -1, group)
    binding = address.with_name(f".{os.getpid()}.sock")
    binding.unlink(missing_ok=True)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
                         options=[("grpc.max_receive_message_length", 16 << 20),
                                  ("grpc.max_send_message_length", 16 << 20)])
    pb_grpc.add_SnapshotsServicer_to_server(SnapshotsService(snapshotter), server)
    umask = os.umask(0o777 & ~mode)  # bind() creates the socket file
    try:
        bound = server.add_insecure_port(f"unix://{binding}")
    finally:
        os.umask(umask)
    if bound == 0:
        raise OSError(f"cannot listen on {address}")
    if group is not None:
        os.chown(binding, -1, group)
    os.chmod(binding, mode)
    server.start()
    binding.rename(address)
    log.info("serving containerd.services.snapshots.v1.Snapshots on %s (mode %04o%s)", address, mode,
             f", group {group}" if group is not None else "")
    return server
