"""Running the decoding of one large read on every core.

The decoders (liblz4 through the native module, liblzma, zlib, libzstd) release the GIL while they work,
so the pclusters of one read decode in parallel when they are shared out between threads. The pool is
per process (a forked child makes its own) and small: one thread per usable core.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _executor() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=cores(), thread_name_prefix="erofs-decode")
            _pool_pid = os.getpid()
        return _pool


def _run_all(jobs: Sequence[Callable[[], T]]) -> list[T]:
    return [job() for job in jobs]


def run_shared(jobs: Sequence[Callable[[], T]]) -> list[T]:
    """The results of ``jobs``, in order, computed in up to one contiguous group per core: the calling thread
    runs the first group, pool threads the others. Jobs must not wait for the pool themselves."""
    groups = min(cores(), len(jobs))
    if groups < 2:
        return _run_all(jobs)
    size = -(-len(jobs) // groups)
    shares = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    pool = _executor()
    futures: list[Future[list[T]]] = [pool.submit(_run_all, share) for share in shares[1:]]
    try:
        results = _run_all(shares[0])
    finally:
        # whatever happens here, the other shares finish before their inputs go away
        for future in futures:
            future.exception()
    for future in futures:
        results.extend(future.result())
    return results
