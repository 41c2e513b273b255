"""Orders of one query's candidates: the incoming one, by the service's score, and the article's
business rules on top of the score (drop below a threshold, blend with a business signal)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .dataset import EvalQuery


def incoming(query: EvalQuery) -> list[str]:
    return [c.id for c in query.candidates]


def _order(query: EvalQuery, keys: Sequence[float]) -> list[int]:
    # best first; equal keys keep the incoming order, so a tie never helps or hurts by chance
    return sorted(range(len(keys)), key=lambda i: (-keys[i], i))


def reranked(query: EvalQuery, scores: Sequence[float]) -> list[str]:
    return [query.candidates[i].id for i in _order(query, scores)]


@dataclass(frozen=True)
class MinScore:
    """Leave out candidates scoring below `threshold` (the article filters weak matches)."""

    threshold: float

    @property
    def name(self) -> str:
        return f"score>={self.threshold:g}"

    def apply(self, query: EvalQuery, scores: Sequence[float]) -> list[str]:
        return [query.candidates[i].id for i in _order(query, scores) if scores[i] >= self.threshold]


@dataclass(frozen=True)
class Blend:
    """Order by (1 - weight) * score + weight * signal, the signal min-max scaled to [0, 1]
    within the query (so sales counts and margins mix with a score in [0, 1]); a candidate
    without the signal counts as the query's lowest."""

    signal: str
    weight: float

    @property
    def name(self) -> str:
        return f"blend {self.signal} {self.weight:g}"

    def keys(self, query: EvalQuery, scores: Sequence[float]) -> list[float]:
        raw = [c.signals.get(self.signal) for c in query.candidates]
        present = [v for v in raw if v is not None]
        lo, hi = (min(present), max(present)) if present else (0.0, 0.0)
        span = hi - lo
        scaled = [0.0 if v is None or span == 0 else (v - lo) / span for v in raw]
        return [(1 - self.weight) * s + self.weight * g for s, g in zip(scores, scaled)]

    def apply(self, query: EvalQuery, scores: Sequence[float]) -> list[str]:
        return [query.candidates[i].id for i in _order(query, self.keys(query, scores))]


Rule = MinScore | Blend


def parse_blend(spec: str) -> Blend:
    """'sales:0.2' -> Blend('sales', 0.2)."""
    signal, sep, weight = spec.rpartition(":")
    try:
        value = float(weight)
    except ValueError:
        value = float("nan")
    if not sep or not signal or not 0 <= value <= 1:
        raise ValueError(f"--blend: expected SIGNAL:WEIGHT with a weight in [0, 1], got {spec!r}")
    return Blend(signal, value)
