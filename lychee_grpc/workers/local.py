"""One engine in this process: the default EngineClient."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from ..engine.engine import Engine
from ..engine.types import Document, Query, RequestStats, Score


class LocalJob:
    def __init__(self, engine: Engine, job, truncate: bool = False, max_tokens: int = 0):
        self._engine = engine
        self._job = job
        self._truncate = truncate
        self._max_tokens = max_tokens

    @property
    def stats(self) -> RequestStats:
        return self._job.stats

    async def add_documents(self, documents: Sequence[Document]) -> None:
        await self._engine.add_documents(self._job, documents, self._truncate, self._max_tokens)

    def close(self) -> None:
        self._job.close()

    def cancel(self) -> None:
        self._job.cancel()

    def fail(self, error: BaseException) -> None:
        self._job.fail(error)

    def results(self) -> AsyncIterator[Score]:
        return self._job.results()


class LocalEngineClient:
    workers = 1

    def __init__(self, engine: Engine):
        self.engine = engine

    @property
    def ready(self) -> bool:
        return self.engine.ready

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()

    async def open_job(
        self, query: Query, instruction: str, deadline: float | None, truncate: bool = False, max_tokens: int = 0
    ) -> LocalJob:
        job = await self.engine.open_job(query, instruction, deadline)
        return LocalJob(self.engine, job, truncate, max_tokens)

    def info(self):
        return self.engine.info()

    def stats(self):
        return self.engine.stats()
