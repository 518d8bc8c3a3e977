"""A bounded, thread-safe LRU cache: workers fill it, the GUI thread reads it. Memory stays bounded by bytes."""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

import numpy as np


def nbytes(value: Any) -> int:
    """Rough size of a cached value: numpy arrays (also inside tuples, lists, dicts and objects) count their buffers."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value) + 64
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values()) + 64
    if hasattr(value, "__dict__"):
        return sum(nbytes(v) for v in vars(value).values()) + 64
    return sys.getsizeof(value)


class LRUCache:
    """Least-recently-used eviction once the total size passes `max_bytes` (or the count passes `max_items`).

    One key can be pinned (the image on screen): it is never evicted, and it counts against the budget, so what
    is on screen plus what is cached stays within it. Without the pin, prefetching the neighbours of a big image
    evicted it while the view still held it, and memory went over the budget by that image. A value that cannot
    fit beside the pinned one is not kept.
    """

    def __init__(self, max_bytes: int, max_items: int = 100_000, sizeof: Callable[[Any], int] = nbytes):
        self.max_bytes, self.max_items, self._sizeof = max_bytes, max_items, sizeof
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._pinned: Hashable | None = None
        self._lock = threading.Lock()

    def pin(self, key: Hashable | None) -> None:
        """Keep `key` (cached now or later) until another key, or None, is pinned."""
        with self._lock:
            self._pinned = key
            self._evict()

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return default
            self._items.move_to_end(key)
            return hit[0]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def put(self, key: Hashable, value: Any) -> Any:
        size = self._sizeof(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, size)
            self._bytes += size
            self._evict()
        return value

    def _evict(self) -> None:
        """Oldest first, never the pinned key (called with the lock held)."""
        while self._bytes > self.max_bytes or len(self._items) > self.max_items:
            victim = next((k for k in self._items if k != self._pinned), None)
            if victim is None:
                return
            _, evicted = self._items.pop(victim)
            self._bytes -= evicted

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)
