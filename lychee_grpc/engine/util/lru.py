"""One thread-safe least-recently-used map, bounded by entry count and optionally by a size
measure (bytes, for tensors). Used by the grid cache, the tower's layouts, the vision cache and the
token cache of documents' text."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    def __init__(self, max_items: int | None = None, max_size: int | None = None,
                 size_of: Callable[[V], int] = lambda value: 1):
        self.max_items = max_items
        self.max_size = max_size
        self._size_of = size_of
        self._items: OrderedDict[K, V] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def get_many(self, keys: Sequence[K]) -> list[V | None]:
        """`get` of each key, under one acquisition of the lock."""
        with self._lock:
            items = self._items
            out = [items.get(key) for key in keys]
            for key, value in zip(keys, out):
                if value is not None:
                    items.move_to_end(key)
            return out

    def put_many(self, entries: Iterable[tuple[K, V]]) -> None:
        """`put` of each (key, value), in order, under one acquisition of the lock (a value larger
        than `max_size` is not kept)."""
        sized = [(key, value, self._size_of(value)) for key, value in entries]
        with self._lock:
            for key, value, size in sized:
                if self.max_size is not None and size > self.max_size:
                    continue
                old = self._items.pop(key, None)
                if old is not None:
                    self._size -= self._size_of(old)
                self._items[key] = value
                self._size += size
            self._evict()

    def put(self, key: K, value: V) -> None:
        """Stores `value` as the most recent entry; a value larger than `max_size` is not kept."""
        self.put_many(((key, value),))

    def _evict(self) -> None:  # under the lock
        while (self.max_items is not None and len(self._items) > self.max_items) or (
            self.max_size is not None and self._size > self.max_size
        ):
            _, evicted = self._items.popitem(last=False)
            self._size -= self._size_of(evicted)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0

    def __contains__(self, key: object) -> bool:  # the container protocol's signature
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def keys(self) -> list[K]:
        """Least recent first."""
        with self._lock:
            return list(self._items)

    @property
    def size(self) -> int:
        with self._lock:
            return self._size
