"""Domain errors. The transport maps each to one gRPC status code, in one place."""

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


class LimitExceeded(EngineError):
    """Over a configured size limit (documents per request, queue depth)."""

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(message)


class NotReady(EngineError):
    """The engine is loading, or draining for shutdown."""


class ModelLoadError(EngineError):
    """The model cannot be loaded; the message says why and what to do."""
