"""Domain objects shared by the engine and the transport."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    data: bytes


Part = TextPart | ImagePart


@dataclass(frozen=True)
class Query:
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class Document:
    id: str
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class Score:
    """One document's result. `index` is its position in the request (or stream)."""

    index: int
    id: str
    score: float
    logit: float
    truncated: bool = False  # the document's text was cut to fit the token limit
    cached: bool = False  # answered from the service's pair-score cache (never set by the engine)


@dataclass
class Usage:
    prompt_tokens: int = 0
    computed_tokens: int = 0
    images: int = 0
    cached_images: int = 0
    # Set by the service: documents answered from its pair-score cache, and documents answered by
    # an identical document's computation (repeated in the request, or queued for another).
    cached_documents: int = 0
    deduplicated_documents: int = 0


@dataclass
class Timings:
    preprocess_ms: float = 0.0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0


@dataclass
class RequestStats:
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    # (start, end) time.perf_counter() of each model batch that held the request's documents.
    batches: list[tuple[float, float]] = field(default_factory=list)
