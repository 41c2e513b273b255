"""The GPU's kernels as busy stretches and idle gaps: the interval merge the profile reports share
(bench.profile.timeline's per-request report, c8_timeline's idle_report and, through it,
kernel_kinds). Kernels on concurrent streams overlap, so busy time counts each overlapped
microsecond once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class Stretch:
    """Time at least one kernel ran, without a break (us), with the name of the kernel that opened
    it and of the one that ran latest into it."""

    start: float
    end: float
    first: str
    last: str


@dataclass(frozen=True)
class Gap:
    """No kernel running from `start` to `end` (us): after `before` ended, until `after` started."""

    start: float
    end: float
    before: str
    after: str

    @property
    def length(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class KernelTimeline:
    stretches: list[Stretch]  # in time order

    @property
    def first(self) -> float:
        """When the first kernel started (us)."""
        return self.stretches[0].start

    @property
    def last(self) -> float:
        """When the last kernel ended (us)."""
        return self.stretches[-1].end

    @property
    def busy(self) -> float:
        """Microseconds with at least one kernel running."""
        return sum(s.end - s.start for s in self.stretches)

    @property
    def gaps(self) -> list[Gap]:
        """The idle gaps between the stretches, in time order."""
        pairs = zip(self.stretches, self.stretches[1:])
        return [Gap(before.end, after.start, before.last, after.first) for before, after in pairs]


def kernel_timeline(kernels: Iterable[tuple[float, float, str]]) -> KernelTimeline:
    """Merges kernels, (start us, end us, name), into busy stretches; at least one kernel."""
    stretches: list[Stretch] = []
    for start, end, name in sorted(kernels):
        if stretches and start <= stretches[-1].end:
            if end > stretches[-1].end:
                stretches[-1].end, stretches[-1].last = end, name
        else:
            stretches.append(Stretch(start, end, name, name))
    if not stretches:
        raise ValueError("no kernels to merge")
    return KernelTimeline(stretches)
