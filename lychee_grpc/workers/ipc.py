"""Messages crossing the pipe between the pool (server process) and each engine worker.

Plain picklable dataclasses; errors travel as `WireError` (an exception's kind and fields),
because the engine's exceptions do not survive pickling with their details."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engine import errors as engine_errors
from ..engine.types import Document, Query, RequestStats, Score


@dataclass(frozen=True)
class WireError:
    kind: str  # the engine error's class name, or "internal"
    message: str
    violations: tuple[tuple[str, str], ...] = ()
    retry_after: float = 0.0

    @classmethod
    def of(cls, exc: BaseException) -> WireError:
        if isinstance(exc, engine_errors.InvalidInput):
            return cls(type(exc).__name__, str(exc), tuple((v.field, v.description) for v in exc.violations))
        if isinstance(exc, engine_errors.Overloaded):
            return cls("Overloaded", str(exc), retry_after=exc.retry_after)
        if isinstance(exc, engine_errors.EngineError):
            return cls(type(exc).__name__, str(exc))
        return cls("internal", f"{type(exc).__name__}: {exc}")

    def rebuild(self, index_map: dict[int, int] | None = None) -> BaseException:
        """The exception again; `documents[k]` field paths are renamed through `index_map`
        (worker-local index -> the request's index)."""
        if self.kind in ("InvalidInput", "TooLarge"):
            cls = engine_errors.TooLarge if self.kind == "TooLarge" else engine_errors.InvalidInput
            return cls([engine_errors.FieldViolation(_renamed(f, index_map), d) for f, d in self.violations])
        if self.kind == "Overloaded":
            return engine_errors.Overloaded(self.message, self.retry_after)
        cls = getattr(engine_errors, self.kind, None)
        if isinstance(cls, type) and issubclass(cls, engine_errors.EngineError):
            return cls(self.message)
        return WorkerFault(self.message)


class WorkerFault(RuntimeError):
    """An unexpected error inside a worker (reaches the caller as INTERNAL)."""


def _renamed(path: str, index_map: dict[int, int] | None) -> str:
    if not index_map or not path.startswith("documents["):
        return path
    close = path.index("]")
    local = int(path[len("documents[") : close])
    return f"documents[{index_map.get(local, local)}]{path[close + 1:]}"


# ---- pool -> worker ---------------------------------------------------------------------
@dataclass(frozen=True)
class OpenJob:
    job: int
    query: Query
    instruction: str
    deadline: float | None  # time.monotonic(), the same clock in every process of the host
    truncate: bool = False  # over-long documents have their text cut instead of being refused
    max_tokens: int = 0  # the request's token limit per document (0: the server's)


@dataclass(frozen=True)
class AddDocuments:
    job: int
    seq: int
    documents: list[Document]


@dataclass(frozen=True)
class CloseJob:
    job: int


@dataclass(frozen=True)
class CancelJob:
    job: int


@dataclass(frozen=True)
class Shutdown:
    pass


# ---- worker -> pool ---------------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    info: Any  # the engine's ModelInfo


@dataclass(frozen=True)
class StartFailed:
    error: WireError


@dataclass(frozen=True)
class Opened:
    job: int
    error: WireError | None = None


@dataclass(frozen=True)
class Added:
    job: int
    seq: int
    tokens: list[int] = field(default_factory=list)  # per document, in order
    error: WireError | None = None


@dataclass(frozen=True)
class Scored:
    job: int
    score: Score  # index is worker-local


@dataclass(frozen=True)
class JobDone:
    job: int
    stats: RequestStats
    error: WireError | None = None


@dataclass(frozen=True)
class Snapshot:
    """The worker's engine info and stats, sent every interval and after each job."""

    info: Any
    stats: Any


@dataclass(frozen=True)
class Observed:
    """One StatsObserver call made by the worker's engine, replayed in the pool's process."""

    method: str
    args: tuple
