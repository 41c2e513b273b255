"""Admission control: requests served at once are bounded, and one past the bound is refused at
once with a retry delay, never queued. (The queued-token bound is the scheduler's, where a
request's tokens are known; it refuses the same way.)"""

from __future__ import annotations

import time
from collections.abc import Generator
from contextlib import contextmanager

from .errors import Overloaded

# Weight of the newest request in the running mean of request durations.
_SMOOTHING = 0.1


class Admission:
    def __init__(self, max_concurrent: int):
        self.max_concurrent = max_concurrent  # 0: no bound
        self.active = 0
        self.refused = 0
        self._mean_seconds: float | None = None

    @contextmanager
    def permit(self) -> Generator[None]:
        """Holds one of the permits for the request's lifetime; raises Overloaded when none is free."""
        if self.max_concurrent and self.active >= self.max_concurrent:
            self.refused += 1
            raise Overloaded(
                f"{self.active} requests in progress, the limit is {self.max_concurrent}; retry later",
                retry_after=self.retry_after(),
            )
        self.active += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self.active -= 1
            self.measured(time.perf_counter() - started)

    def retry_after(self) -> float:
        """Seconds until a permit is likely free: with every permit held, requests finish at
        about max_concurrent / mean duration per second. 1 s until a request has been measured."""
        if self._mean_seconds is None:
            return 1.0
        return min(60.0, max(0.05, self._mean_seconds / max(1, self.max_concurrent)))

    def measured(self, seconds: float) -> None:
        """One request's duration, into the running mean the retry delay comes from."""
        mean = self._mean_seconds
        self._mean_seconds = seconds if mean is None else mean + _SMOOTHING * (seconds - mean)
