"""A thread-safe LRU cache bounded by the total size of its values."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class SizedLRU(Generic[V]):
    """Least-recently-used mapping whose values' sizes add up to at most ``capacity``.

    ``sizeof`` gives the cost of a value (bytes for buffers, 1 for records), so
    the same class bounds a cache of decompressed data by memory and a cache
    of decoded inodes by count. A value larger than the capacity is returned
    to the caller but not kept.
    """

    def __init__(self, capacity: int, sizeof: Callable[[V], int] = len):  # type: ignore[assignment]
        self.capacity = capacity
        self._sizeof = sizeof
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: V) -> V:
        size = self._sizeof(value)
        if size > self.capacity:
            return value
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._used -= self._sizeof(old)
            self._items[key] = value
            self._used += size
            while self._used > self.capacity:
                _, evicted = self._items.popitem(last=False)
                self._used -= self._sizeof(evicted)
        return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    @property
    def used(self) -> int:
        return self._used

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._used = 0
