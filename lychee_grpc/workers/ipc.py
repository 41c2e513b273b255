"""Messages crossing the pipe between the pool (server process) and each engine worker.

Plain picklable dataclasses. Errors travel as `WireError`: the service's error kind and its
details (violations, retry delay), because the engine's exceptions do not survive pickling with
their details, and a kind is what every reader of an error needs."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine.api import EngineInfo, IndexedDocument, Truncation
from ..engine.errors import FieldViolation
from ..engine.stats import EngineStats
from ..engine.types import Query, RequestStats, Score
from ..service.errors import ErrorKind, error_of, kind_of, retry_after_of, violations_of


@dataclass(frozen=True)
class WireError:
    kind: ErrorKind
    message: str
    violations: tuple[FieldViolation, ...] = ()
    retry_after: float = 0.0

    @classmethod
    def of(cls, exc: BaseException) -> WireError:
        kind = kind_of(exc)
        message = f"{type(exc).__name__}: {exc}" if kind is ErrorKind.INTERNAL else str(exc)
        return cls(kind, message, tuple(violations_of(exc)), retry_after_of(exc) or 0.0)

    def rebuild(self) -> Exception:
        return error_of(self.kind, self.message, self.violations, self.retry_after)


# ---- pool -> worker ---------------------------------------------------------------------
@dataclass(frozen=True)
class OpenJob:
    job: int
    query: Query
    instruction: str
    truncation: Truncation
    max_tokens_per_document: int
    deadline: float | None  # time.monotonic(), the same clock in every process of the host


@dataclass(frozen=True)
class AddDocuments:
    job: int
    seq: int
    documents: list[IndexedDocument]  # indices are the request's


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
    info: EngineInfo


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
    tokens: list[int] = field(default_factory=list)  # each document's prompt tokens, in order
    error: WireError | None = None


@dataclass(frozen=True)
class Scored:
    job: int
    score: Score


@dataclass(frozen=True)
class JobDone:
    job: int
    stats: RequestStats
    error: WireError | None = None


@dataclass(frozen=True)
class Snapshot:
    """The worker's engine info and stats, sent every interval and after each job."""

    info: EngineInfo
    stats: EngineStats


@dataclass(frozen=True)
class Observed:
    """One StatsObserver call made by the worker's engine, replayed in the pool's process."""

    method: str
    args: tuple[int | float | str, ...]


ToWorker = OpenJob | AddDocuments | CloseJob | CancelJob | Shutdown
JobCommand = AddDocuments | CloseJob | CancelJob
ToPool = Ready | StartFailed | Opened | Added | Scored | JobDone | Snapshot | Observed
