"""Typed failures of snapshot operations.

Each class stands for one containerd error kind (errdefs); the gRPC edge maps them to status codes in one
place, so nothing below the service knows about gRPC.
"""

from __future__ import annotations


class SnapshotterError(Exception):
    """Base class; anything else escaping an operation is an internal error."""


class NotFound(SnapshotterError):
    """The key (or parent) names no snapshot."""


class AlreadyExists(SnapshotterError):
    """The key (or commit name) is taken."""


class FailedPrecondition(SnapshotterError):
    """The snapshot is in the wrong state for the request: commit of a view, removal with children, ..."""


class InvalidArgument(SnapshotterError):
    """The request itself is malformed: empty key, immutable field in an update, bad filter, ..."""


class MountError(SnapshotterError):
    """A layer could not be mounted (kernel refusal, erofsfuse failure)."""


class ConversionError(SnapshotterError):
    """mkfs.erofs could not turn an upper directory into a layer blob."""
