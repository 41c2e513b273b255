"""What each transport reports once per call, to every request observer (access log, metrics,
traces): the call's `RequestRecord` and the `RequestObserver` protocol.

The transport opens the record when the call starts (the caller's trace context), fills it from
what the service returned (`RerankOutcome.served`) and hands it to the observers when the call
ends; the service never writes it. `current_record` holds the open call's record, so that the
transport's handler can fill what its interceptor or middleware opened.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from ..engine.types import RequestStats
from ..service.types import Served


@dataclass
class RequestRecord:
    traceparent: str = ""  # W3C trace context offered by the caller
    tracestate: str = ""
    documents: int = 0
    tokens: int = 0
    images: int = 0
    truncated: int = 0
    stats: RequestStats | None = None  # the engine's timings and batches, once scored


# Set by the transport when a call opens; None outside a call.
current_record: ContextVar[RequestRecord | None] = ContextVar("lychee_request_record", default=None)


def note_served(served: Served) -> None:
    """Fills the open call's record from what the service served (a no-op outside a call)."""
    record = current_record.get()
    if record is None:
        return
    record.documents, record.truncated, record.stats = served.documents, served.truncated, served.stats
    record.tokens, record.images = served.stats.usage.prompt_tokens, served.stats.usage.images


class RequestObserver(Protocol):
    def request_done(
        self, transport: str, method: str, code: str, seconds: float, request_id: str, peer: str,
        record: RequestRecord | None = None,
    ) -> None:
        """Once per call, when it ends; `record` holds what the call carried (documents, tokens,
        images, the engine's timings) and the caller's trace context."""
        ...
