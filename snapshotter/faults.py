"""Fault injection for crash-safety tests: ``EROFS_SNAPSHOTTER_FAULT=POINT`` or ``POINT:fail``.

Every step of Prepare/View, Commit and Remove that changes something on disk passes a named point. When
the variable names that point the process SIGKILLs itself there (or, with ``:fail``, the step raises an
OSError as a full disk would), so a test can show that a crash or an error at any step leaves records,
directories, blobs and mounts consistent once the snapshotter is started again. Unset, a point costs one
comparison. A misspelt point stops the snapshotter at start, so a test can never miss its target silently.
"""

from __future__ import annotations

import errno
import logging
import os
import signal

log = logging.getLogger(__name__)

ENV = "EROFS_SNAPSHOTTER_FAULT"
ACTIONS = ("kill", "fail")

POINTS = (
    "create:mounted",  # the parent chain's mounts are live; no record yet
    "create:dirs-made",  # the record is written but not committed; the directories exist
    "create:recorded",  # record and directories are in place; the client has no answer yet
    "commit:converting",  # mkfs.erofs is writing the temporary blob
    "commit:blob-written",  # the temporary blob is complete but neither synced nor renamed
    "commit:staged",  # the synced blob waits next to the layer's place; the record is still active
    "commit:recorded",  # the record says committed; the blob is not in place yet
    "commit:placed",  # layer.erofs is in place; the upper dir is not retired yet
    "commit:upper-retired",  # the upper dir is in the trash; the work dir is still there
    "remove:deleted",  # the record is gone; mounts and directories are still there
    "remove:unmounted",  # unused mounts are released; the directories are still there
    "remove:discarded",  # the directories are in the trash, maybe not deleted yet
)


def _configured() -> tuple[str, str] | None:
    spec = os.environ.get(ENV, "")
    if not spec:
        return None
    point, _, action = spec.rpartition(":")
    if action not in ACTIONS:
        point, action = spec, "kill"
    if point not in POINTS:
        raise ValueError(f"{ENV}={spec!r}: expected one of {', '.join(POINTS)}, optionally followed by :fail")
    return point, action


_FAULT = _configured()


def fault_point(name: str) -> None:
    """Crash (or fail) here if the environment asks for it."""
    if _FAULT is None or _FAULT[0] != name:
        return
    if _FAULT[1] == "kill":
        log.warning("fault injected at %s: killing the snapshotter", name)
        os.kill(os.getpid(), signal.SIGKILL)
    log.warning("fault injected at %s: failing the request", name)
    raise OSError(errno.EIO, f"fault injected at {name}")
