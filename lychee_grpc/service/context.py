"""Per-request context every layer can read without passing it along: the request id, and the
request's counts for the access log."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

from ..engine.types import RequestStats

request_id: ContextVar[str] = ContextVar("lychee_request_id", default="")

_SAFE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def new_request_id(offered: str | None) -> str:
    """The caller's id when it is a sane token (it ends up in logs and messages), else a new one."""
    if offered and _SAFE.match(offered):
        return offered
    return uuid.uuid4().hex


@dataclass
class RequestRecord:
    """One call as the transport opened it and the service filled it: for the access log, the
    metrics and the trace, which the transport hands to its observers once the call ends."""

    traceparent: str = ""  # W3C trace context offered by the caller
    tracestate: str = ""
    documents: int = 0
    tokens: int = 0
    images: int = 0
    truncated: int = 0
    stats: RequestStats | None = None  # the engine's timings and batches, once scored


# Set by the transport when a call opens (a mutable record, so the service's writes reach the
# transport whichever task they run in); None outside a call.
request_record: ContextVar[RequestRecord | None] = ContextVar("lychee_request_record", default=None)
