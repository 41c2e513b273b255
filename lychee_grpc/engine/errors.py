"""Domain errors, the whole taxonomy. The service layer gives each a kind (service/errors.py)
and each transport maps kinds to its status codes in one table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class InvalidInput(EngineError):
    """The request is malformed; names every offending field."""

    def __init__(self, violations: list[FieldViolation]):
        self.violations = list(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations[:5])
        more = len(self.violations) - 5
        super().__init__(summary + (f" (and {more} more)" if more > 0 else ""))


class TooLarge(InvalidInput):
    """Over a per-request size limit (documents per request, tokens, or the GPU memory one
    document over a batch's token bound needs). Retrying the same request cannot succeed; a
    smaller one can."""


class Overloaded(EngineError):
    """The server holds more work than its bounds allow (or its GPU memory cannot hold a
    document it is set up to hold); retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float):
        self.retry_after = retry_after
        super().__init__(message)


class NotReady(EngineError):
    """The engine is loading, or draining for shutdown."""


class DeadlineExpired(EngineError):
    """The request's deadline passed before its documents were scored."""


class Cancelled(EngineError):
    """The request was cancelled by its caller."""


class ModelLoadError(EngineError):
    """The model cannot be loaded; the message says why and what to do."""
