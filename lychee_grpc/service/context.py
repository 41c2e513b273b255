"""Per-request context every layer can read without passing it along: the request id (set by the
transport, read by logs and messages)."""

from __future__ import annotations

import itertools
import os
import re
from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("lychee_request_id", default="")

_SAFE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


# New ids: 64 random bits drawn once per process, then a counter (32 hex digits, like a uuid4's):
# unique across replicas with near certainty, and no system call per request (uuid4 read
# os.urandom each time, a point where the event loop's thread gave up the GIL).
_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count(1)


def new_request_id(offered: str | None) -> str:
    """The caller's id when it is a sane token (it ends up in logs and messages), else a new one."""
    if offered and _SAFE.match(offered):
        return offered
    return f"{_PREFIX}{next(_COUNTER):016x}"
