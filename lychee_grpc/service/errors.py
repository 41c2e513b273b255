"""One error taxonomy for every transport: each error has a kind, and each transport maps kinds
to its own codes in one table (rpc/status.py, the HTTP status table). Errors cross the worker
processes' pipes as their kind too (`kind_of` there, `error_of` back)."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from ..engine.errors import (
    Cancelled,
    DeadlineExpired,
    EngineError,
    FieldViolation,
    InvalidInput,
    NotReady,
    Overloaded,
    TooLarge,
)

__all__ = [
    "Cancelled",
    "DeadlineExpired",
    "EngineError",
    "ErrorKind",
    "FieldViolation",
    "InternalFault",
    "InvalidInput",
    "NotReady",
    "Overloaded",
    "TooLarge",
    "Unauthenticated",
    "error_of",
    "kind_of",
    "retry_after_of",
    "violations_of",
]


class ErrorKind(str, Enum):
    INVALID = "invalid_argument"
    TOO_LARGE = "too_large"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    DEADLINE = "deadline_exceeded"
    CANCELLED = "cancelled"
    UNAUTHENTICATED = "unauthenticated"
    INTERNAL = "internal"


class Unauthenticated(EngineError):
    """No bearer token, or one the server does not hold."""


class InternalFault(RuntimeError):
    """An unexpected error reported by another process (an engine worker): INTERNAL."""


_KINDS: tuple[tuple[type[EngineError], ErrorKind], ...] = (
    (TooLarge, ErrorKind.TOO_LARGE),  # before InvalidInput, its base
    (InvalidInput, ErrorKind.INVALID),
    (Overloaded, ErrorKind.OVERLOADED),
    (NotReady, ErrorKind.UNAVAILABLE),
    (DeadlineExpired, ErrorKind.DEADLINE),
    (Cancelled, ErrorKind.CANCELLED),
    (Unauthenticated, ErrorKind.UNAUTHENTICATED),
)


def kind_of(exc: BaseException) -> ErrorKind:
    for cls, kind in _KINDS:
        if isinstance(exc, cls):
            return kind
    return ErrorKind.INTERNAL


def error_of(
    kind: ErrorKind, message: str, violations: Sequence[FieldViolation] = (), retry_after: float = 0.0
) -> Exception:
    """An exception of `kind` again (the first class of its kind in the table)."""
    cls = next((c for c, k in _KINDS if k is kind), None)
    if cls is None:
        return InternalFault(message)
    if issubclass(cls, InvalidInput):
        return cls(list(violations))
    if issubclass(cls, Overloaded):
        return cls(message, retry_after)
    return cls(message)


def violations_of(exc: BaseException) -> list[FieldViolation]:
    return list(exc.violations) if isinstance(exc, InvalidInput) else []


def retry_after_of(exc: BaseException) -> float | None:
    return exc.retry_after if isinstance(exc, Overloaded) else None
