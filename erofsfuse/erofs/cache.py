"""A thread-safe LRU cache bounded by the total size of its values."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sized
from typing import Generic, TypeVar

V = TypeVar("V", bound=Sized)


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
