"""The order of results: the one rule, used by the engine's own rerank and by the service."""

from __future__ import annotations

from collections.abc import Sequence

from .types import Score


def rank(scores: Sequence[Score], top_n: int = 0) -> list[Score]:
    """Best first; ties by logit, then by arrival."""
    ordered = sorted(scores, key=lambda s: (-s.score, -s.logit, s.index))
    return ordered[:top_n] if top_n > 0 else ordered
