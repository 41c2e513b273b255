"""What the service layer needs from an engine, wherever it runs (in process, or worker
processes behind a pool)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Protocol

from ..engine.stats import EngineStats
from ..engine.types import Document, Query, RequestStats, Score

if TYPE_CHECKING:
    from ..engine.engine import ModelInfo  # imports torch; only the type is needed here


class JobHandle(Protocol):
    """The documents of one request, and their scores as they are computed."""

    stats: RequestStats

    async def add_documents(self, documents: Sequence[Document]) -> None:
        """Validates, prepares and queues documents; their indices continue the job's count."""

    def close(self) -> None:
        """No more documents will be added."""

    def cancel(self) -> None:
        """Drops the job's remaining work."""

    def fail(self, error: BaseException) -> None:
        """Ends the job's results with this error."""

    def results(self) -> AsyncIterator[Score]:
        """Scores as they are computed, until the job is closed and everything is scored."""


class EngineClient(Protocol):
    workers: int  # engine workers (devices) behind this client

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def open_job(
        self, query: Query, instruction: str, deadline: float | None, truncate: bool = False, max_tokens: int = 0
    ) -> JobHandle:
        """A job whose over-long documents are refused, or with `truncate` have their text cut to
        `max_tokens` (0: the server's limit)."""

    def info(self) -> ModelInfo:
        """The engine's model and limits (with several workers: every device, caches summed)."""

    def stats(self) -> EngineStats | dict[str, EngineStats]:
        """The engine's counters now; with several workers, each device's last report."""
