"""Logging set-up (text or one JSON object per line) and the access log: one line per call."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from ..service import context as request_context
from .requests import RequestRecord

FORMATS = ("text", "json")
ACCESS_LOGGER = "lychee_grpc.access"

# LogRecord's own attributes; anything else on a record came from `extra=` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the call it was logged in ("" outside calls)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_context.request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, exc, and the fields
    passed with `extra=`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "") or request_context.request_id.get()
        if rid:
            out["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out and key != "request_id":
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", "")
        return f"{line} [request_id={rid}]" if rid and rid not in line else line


def configure(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Replaces the root logger's handlers with one in `fmt` ("text" or "json")."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


class AccessLog:
    """A RequestObserver: one INFO line per call on the `lychee_grpc.access` logger, with its
    fields also passed as `extra` (so the JSON format has them as keys)."""

    def __init__(self, logger: logging.Logger | None = None):
        self.log = logger or logging.getLogger(ACCESS_LOGGER)

    def request_done(self, transport: str, method: str, code: str, seconds: float, request_id: str, peer: str,
                     record: RequestRecord | None = None) -> None:
        record = record or RequestRecord()
        fields = {
            "transport": transport,
            "method": method,
            "code": code,
            "ms": round(seconds * 1e3, 1),
            "documents": record.documents,
            "tokens": record.tokens,
            "images": record.images,
            "truncated": record.truncated,
            "peer": peer,
            "request_id": request_id,
        }
        self.log.info(
            "%s %s %s %.1f ms documents=%d tokens=%d images=%d truncated=%d peer=%s request_id=%s",
            transport, method, code, fields["ms"], record.documents, record.tokens, record.images,
            record.truncated, peer, request_id, extra=fields,
        )
