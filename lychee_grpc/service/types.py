"""The service's request and response types, shared by every transport."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine.api import Truncation
from ..engine.errors import FieldViolation
from ..engine.types import Document, ImagePart, Part, Query, RequestStats, TextPart, Timings, Usage
from .bands import BandThresholds
from .score_cache import ScoreCacheStats

__all__ = [
    "Document",
    "ExplainOptions",
    "ExplainOutcome",
    "FieldViolation",
    "Fragment",
    "ImagePart",
    "Limits",
    "ModelInfo",
    "Part",
    "Query",
    "RankedResult",
    "RerankOptions",
    "RerankOutcome",
    "Served",
    "TextPart",
    "Timings",
    "Usage",
]

TRUNCATIONS = tuple(t.value for t in Truncation)


@dataclass(frozen=True)
class RerankOptions:
    instruction: str = ""  # empty: the server's default
    top_n: int = 0  # 0: all
    min_score: float | None = None  # results below it are left out of the ranking
    truncation: str | None = None  # "none" (refuse), "end" (keep the first tokens); None: server default
    max_tokens_per_document: int = 0  # 0: the server's limit
    return_documents: bool = False
    deadline: float | None = None  # time.monotonic() value
    request_id: str = ""


@dataclass(frozen=True)
class RankedResult:
    index: int  # position in the request (in a stream: arrival order)
    id: str
    score: float
    logit: float
    band: str  # "strong", "medium", "weak"
    truncated: bool = False
    cached: bool = False  # answered from the pair-score cache


@dataclass(frozen=True)
class Served:
    """What a scored request carried, returned for the transport's access log, metrics and trace."""

    documents: int = 0
    truncated: int = 0
    stats: RequestStats = field(default_factory=RequestStats)  # usage, timings, the batches it was in


@dataclass
class RerankOutcome:
    results: list[RankedResult]  # best first, after top_n and min_score
    usage: Usage
    timings: Timings
    model: str
    truncated_documents: int = 0
    dropped_documents: int = 0  # below min_score
    request_id: str = ""
    served: Served = field(default_factory=Served)


@dataclass(frozen=True)
class ExplainOptions:
    instruction: str = ""
    grid_size: int = 0  # 0: the server's default
    include_query: bool = False
    deadline: float | None = None
    request_id: str = ""


@dataclass(frozen=True)
class Fragment:
    source: str  # "query" or "document"
    part_index: int
    attribution: float  # full score minus the occluded variant's score
    occluded_score: float
    # Text fragments: the text and its [start, end) code-point offsets in the part.
    text: str = ""
    start: int = 0
    end: int = 0
    # Image fragments: the cell's box in the image's pixels.
    x: int = 0
    y: int = 0
    width: int = 0
    height: int = 0


@dataclass
class ExplainOutcome:
    score: float
    logit: float
    band: str
    fragments: list[Fragment]
    usage: Usage
    timings: Timings
    model: str
    request_id: str = ""


@dataclass(frozen=True)
class Limits:
    """Named like the lychee.v1 Limits message, field for field."""

    max_documents_per_request: int
    max_tokens_per_document: int
    max_query_tokens: int
    max_image_bytes: int
    max_image_pixels: int
    min_image_model_pixels: int
    max_image_model_pixels: int
    max_instruction_tokens: int
    max_concurrent_requests: int
    max_queue_tokens: int
    max_queue_documents: int
    default_truncation: str
    max_explain_fragments: int
    explain_grid_size: int


@dataclass(frozen=True)
class ModelInfo:
    model: str
    dtype: str
    attention: str
    devices: tuple[str, ...]
    limits: Limits
    default_instruction: str
    bands: BandThresholds
    random_weights: bool
    parameters: int
    image_cache_bytes: int
    image_cache_capacity_bytes: int
    image_cache_hits: int
    image_cache_misses: int
    server_version: str
    workers: int = 1
    extra: dict[str, str] = field(default_factory=dict[str, str])
    batch_invariant: bool = False
    score_cache: ScoreCacheStats = field(default_factory=ScoreCacheStats)
    # The token cache of documents' text (--token-cache-mib), as the image cache's four above.
    token_cache_bytes: int = 0
    token_cache_capacity_bytes: int = 0
    token_cache_hits: int = 0
    token_cache_misses: int = 0
