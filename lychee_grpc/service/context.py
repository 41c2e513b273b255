"""Per-request context every layer can read without passing it along: the request id (set by the
transport, read by logs and messages)."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("lychee_request_id", default="")

_SAFE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def new_request_id(offered: str | None) -> str:
    """The caller's id when it is a sane token (it ends up in logs and messages), else a new one."""
    if offered and _SAFE.match(offered):
        return offered
    return uuid.uuid4().hex
