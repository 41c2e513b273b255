"""The service layer's settings: bands, admission bounds, truncation and explanation limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from .bands import BandThresholds


@dataclass(frozen=True)
class ServiceConfig:
    bands: BandThresholds = field(default_factory=BandThresholds)
    # Admission: requests served at once (each transport's calls alike); more wait nowhere,
    # they are refused with a retry hint.
    max_concurrent_requests: int = 256
    # Tokens queued for the GPU before new work is refused (0: no bound beyond documents).
    max_queue_tokens: int = 2_000_000
    default_truncation: str = "none"
    max_explain_fragments: int = 256
    explain_grid_size: int = 4
    # The pair-score cache's bound (score_cache.py; 0: off). In-request deduplication and single
    # flight stay on either way.
    score_cache_bytes: int = 256 << 20
