"""Relevance bands: how a score reads (the article's 0.75 / 0.55 rule)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BandThresholds:
    strong: float = 0.75
    medium: float = 0.55

    def problem(self) -> str | None:
        if not 0.0 <= self.medium <= self.strong <= 1.0:
            return f"bands need 0 <= medium ({self.medium}) <= strong ({self.strong}) <= 1"
        return None

    def band(self, score: float) -> str:
        if score >= self.strong:
            return "strong"
        if score >= self.medium:
            return "medium"
        return "weak"
