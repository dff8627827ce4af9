"""Thread-safe caching: an LRU bounded by the total size of its values, and one computation per key."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sized
from typing import Generic, TypeVar

V = TypeVar("V", bound=Sized)
T = TypeVar("T")


class SizedLRU(Generic[V]):
    """Least-recently-used mapping whose values' lengths add up to at most ``capacity``.

    A cache of decoded data is bounded by its bytes, a cache of listings by
    its names. A value larger than the capacity is returned to the caller
    but not kept.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: V) -> V:
        size = len(value)
        if size > self.capacity:
            return value
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._used -= len(old)
            self._items[key] = value
            self._used += size
            while self._used > self.capacity:
                _, evicted = self._items.popitem(last=False)
                self._used -= len(evicted)
        return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items


class _Call(Generic[T]):
    """One computation in progress; its lock is held until the result is there."""

    __slots__ = ("running", "result", "error")

    def __init__(self) -> None:
        self.running = threading.Lock()  # a plain lock costs less to make than an Event
        self.running.acquire()
        self.result: T | None = None
        self.error: BaseException | None = None


class SingleFlight(Generic[T]):
    """At most one computation per key at a time: a caller that asks for a key being computed waits for that
    result instead of computing it again (two concurrent reads of one pcluster decode it once)."""

    def __init__(self) -> None:
        self._running: dict[Hashable, _Call[T]] = {}
        self._lock = threading.Lock()

    def run(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            call = self._running.get(key)
            owner = call is None
            if owner:
                call = self._running[key] = _Call()
        if not owner:
            with call.running:  # returns once the owner is done
                pass
            if call.error is not None:
                raise call.error
            return call.result  # type: ignore[return-value]
        try:
            call.result = compute()
            return call.result
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._running[key]
            call.running.release()
