"""A stream's incoming messages, read by one task of the call's own, and drained before an error
ends the call.

Why drain: grpcio's asyncio client (1.85) turns a message it writes after the server has ended the
call into INTERNAL "Internal error from Core", replacing the status the server sent. So a client
that writes two or three messages, the first of them malformed, got INVALID_ARGUMENT or INTERNAL at
random (RELIABILITY.md, "Junk on a stream"). A stream that fails before its client half-closed
therefore goes on reading, and discarding, until the client half-closes, goes quiet, or a bound in
time or bytes is reached; only then is the status sent.

Why one reader task: the service cancels its own reader when a stream fails; had that task been
reading from grpc, the cancellation would have ended grpc's message iterator, and nothing could be
drained afterwards. The service reads from a one-message queue instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

# A well-behaved client has sent everything it will send within milliseconds; these bound what a
# failed call may still cost when one has not.
DRAIN_SECONDS = 5.0
DRAIN_IDLE_SECONDS = 1.0
DRAIN_BYTES = 16 << 20


@dataclass(frozen=True)
class _Closed:
    """The end of the incoming messages: the client's half-close (error None) or a failed read."""

    error: BaseException | None = None


class StreamInbox:
    def __init__(
        self,
        source: AsyncIterator[object],
        accept: Callable[[object], object],
        size: Callable[[object], int],
    ):
        """`accept` turns a message into what the handler reads, raising for one it must not
        read; `size` gives a message's size in bytes (the drain's bound)."""
        self._source = source
        self._accept = accept
        self._size = size
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1)
        self._closed: _Closed | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="lychee-stream-inbox")

    async def _read(self) -> None:
        try:
            async for message in self._source:
                await self._queue.put(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed read ends the messages; the handler sees the error
            await self._queue.put(_Closed(exc))
        else:
            await self._queue.put(_Closed())

    def __aiter__(self) -> StreamInbox:
        return self

    async def __anext__(self) -> object:
        if self._closed is not None:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, _Closed):
            self._closed = item
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return self._accept(item)

    async def drain(self) -> None:
        """Reads and discards messages until the client half-closes or stops sending, within
        DRAIN_SECONDS, DRAIN_IDLE_SECONDS between messages and DRAIN_BYTES."""
        loop = asyncio.get_running_loop()
        end = loop.time() + DRAIN_SECONDS
        drained = 0
        while self._closed is None and drained <= DRAIN_BYTES:
            left = end - loop.time()
            if left <= 0:
                return
            try:
                item = await asyncio.wait_for(self._queue.get(), min(DRAIN_IDLE_SECONDS, left))
            except TimeoutError:
                return
            if isinstance(item, _Closed):
                self._closed = item
                return
            drained += self._size(item)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
