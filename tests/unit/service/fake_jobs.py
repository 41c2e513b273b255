"""What the service's unit tests' fake engine jobs share: results delivered through a queue, as
the engine's own jobs deliver them (a Score, an error that ends the stream, or None at the end)."""

from __future__ import annotations

import asyncio

from lychee_grpc.engine.types import RequestStats


class QueuedJob:
    def __init__(self):
        self.stats = RequestStats()
        self.queue: asyncio.Queue = asyncio.Queue()

    def fail(self, error):
        self.queue.put_nowait(error)

    async def results(self):
        while True:
            item = await self.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def result_batches(self):
        async for score in self.results():
            yield [score]
