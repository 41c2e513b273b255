"""Loading -> serving -> draining -> stopped, and the requests in flight, for every transport.

gRPC health and HTTP /health read it; the service refuses new requests unless it is serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Iterator

from .engine.errors import NotReady

log = logging.getLogger(__name__)


class State(enum.Enum):
    LOADING = "loading"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


class Lifecycle:
    def __init__(self) -> None:
        self.state = State.LOADING
        self.in_flight = 0
        self.failure: str | None = None
        self._listeners: list[Callable[[State], None]] = []
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def serving(self) -> bool:
        return self.state is State.SERVING

    def subscribe(self, listener: Callable[[State], None]) -> None:
        """`listener(state)` now and on every change."""
        self._listeners.append(listener)
        listener(self.state)

    def _set(self, state: State) -> None:
        if state is self.state:
            return
        log.info("lifecycle: %s -> %s", self.state.value, state.value)
        self.state = state
        for listener in self._listeners:
            listener(state)

    def serve(self) -> None:
        self._set(State.SERVING)

    def drain(self) -> None:
        if self.state in (State.LOADING, State.SERVING):
            self._set(State.DRAINING)

    def stopped(self) -> None:
        self._set(State.STOPPED)

    def fail(self, reason: str) -> None:
        """The engine cannot serve any more (a dead scheduler or worker): health goes
        NOT_SERVING and the process exits non-zero so the orchestrator restarts it."""
        if self.failure is None:
            self.failure = reason
            log.error("serving failed: %s", reason)
        self._set(State.FAILED)

    def check(self) -> None:
        if self.state is State.LOADING:
            raise NotReady("the model is loading; retry shortly")
        if self.state is not State.SERVING:
            raise NotReady("the server is shutting down; retry on another replica")

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Admits one request while serving (else NotReady) and counts it until it ends."""
        self.check()
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True when every in-flight request ended within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return self.in_flight == 0
