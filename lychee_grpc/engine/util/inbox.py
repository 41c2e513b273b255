"""A one-reader queue for the event loop: what asyncio.Queue does for a single consumer, at a
fraction of its cost (no maxsize, no getters' list, no put side). Each request's scores pass
through one, one item per document (bench/RESULTS.md, "The per-call cost"); `get_all` hands a
reader everything that arrived together (a batch's scores) in one wake-up."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> T:
        """The oldest item, waiting for one; for one reader at a time."""
        if not self._items:
            await self._arrival()
        return self._items.popleft()

    async def get_all(self) -> list[T]:
        """Every item waiting (at least one, waiting for it), oldest first; for one reader at a time."""
        if not self._items:
            await self._arrival()
        items = list(self._items)
        self._items.clear()
        return items

    async def _arrival(self) -> None:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
