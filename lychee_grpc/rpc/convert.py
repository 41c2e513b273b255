"""Protobuf <-> service types. The only module that reads or builds lychee.v1 messages."""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Iterable, Sequence

from ..proto import lychee_pb2 as pb
from ..service.errors import FieldViolation, InvalidInput
from ..service.types import (
    Document,
    ExplainOptions,
    ExplainOutcome,
    Fragment,
    ImagePart,
    ModelInfo,
    Part,
    Query,
    RankedResult,
    RerankOptions,
    RerankOutcome,
    TextPart,
)

_BANDS = {
    "strong": pb.RELEVANCE_BAND_STRONG,
    "medium": pb.RELEVANCE_BAND_MEDIUM,
    "weak": pb.RELEVANCE_BAND_WEAK,
}
_TRUNCATION_FROM_PB: dict[int, str | None] = {
    pb.TRUNCATION_UNSPECIFIED: None, pb.TRUNCATION_NONE: "none", pb.TRUNCATION_END: "end"}
_TRUNCATION_TO_PB = {"none": pb.TRUNCATION_NONE, "end": pb.TRUNCATION_END}
_SOURCES = {"query": pb.FRAGMENT_SOURCE_QUERY, "document": pb.FRAGMENT_SOURCE_DOCUMENT}


def band(name: str) -> int:
    return _BANDS[name]


def _parts(parts: Iterable[pb.Part], path: str, violations: list[FieldViolation]) -> tuple[Part, ...]:
    # An empty oneof has no domain form, so it is refused here; every other rule is the engine's.
    out: list[Part] = []
    for i, part in enumerate(parts):
        kind = part.WhichOneof("content")
        if kind == "text":
            out.append(TextPart(part.text))
        elif kind == "image":
            out.append(ImagePart(part.image))
        else:
            violations.append(FieldViolation(f"{path}.parts[{i}]", "part has neither text nor image"))
    return tuple(out)


def query_from_proto(query: pb.Query, path: str = "query") -> Query:
    violations: list[FieldViolation] = []
    parts = _parts(query.parts, path, violations)
    if violations:
        raise InvalidInput(violations)
    return Query(parts)


def documents_from_proto(documents: Sequence[pb.Document], first_index: int = 0) -> list[Document]:
    violations: list[FieldViolation] = []
    out = [
        Document(doc.id, _parts(doc.parts, f"documents[{first_index + k}]", violations))
        for k, doc in enumerate(documents)
    ]
    if violations:
        raise InvalidInput(violations)
    return out


def truncation_from_proto(value: int, path: str) -> str | None:
    if value not in _TRUNCATION_FROM_PB:
        raise InvalidInput([FieldViolation(path, f"unknown truncation {value}")])
    return _TRUNCATION_FROM_PB[value]


def min_score_from_proto(value: float) -> float:
    """The lowest score whose float32 (what `RerankResult.score` carries) is at least `value`, so
    that a score read from a response and sent back as min_score keeps that result."""
    if not 0.0 < value <= 1.0:
        return value  # refused by the service naming this value; 0 keeps every result anyway
    below = struct.unpack("<f", struct.pack("<I", struct.unpack("<I", struct.pack("<f", value))[0] - 1))[0]
    middle = (below + value) / 2  # exact in a double; doubles above it round to `value`, ties to even
    return middle if struct.unpack("<f", struct.pack("<f", middle))[0] == value else math.nextafter(middle, math.inf)


def options_from_proto(
    message: pb.RerankRequest | pb.StreamOptions, deadline: float | None, request_id: str, path: str = ""
) -> RerankOptions:
    return RerankOptions(
        instruction=message.instruction,
        top_n=message.top_n,
        min_score=min_score_from_proto(message.min_score) if message.HasField("min_score") else None,
        truncation=truncation_from_proto(message.truncation, f"{path}truncation"),
        max_tokens_per_document=message.max_tokens_per_document,
        return_documents=message.return_documents,
        deadline=deadline,
        request_id=request_id,
    )


def result(r: RankedResult, document: pb.Document | None = None) -> pb.RerankResult:
    msg = pb.RerankResult(
        index=r.index, id=r.id, score=r.score, band=_BANDS[r.band], logit=r.logit, truncated=r.truncated,
        cached=r.cached,
    )
    if document is not None:
        msg.document.CopyFrom(document)
    return msg


def rerank_response(outcome: RerankOutcome, documents: Sequence[pb.Document] | None = None) -> pb.RerankResponse:
    usage, timings = outcome.usage, outcome.timings
    return pb.RerankResponse(
        results=[result(r, documents[r.index] if documents is not None else None) for r in outcome.results],
        usage=pb.Usage(**vars(usage)),  # flat dataclasses of numbers: asdict's deep copy is not needed
        timings=pb.Timings(**vars(timings)),
        model=outcome.model,
        truncated_documents=outcome.truncated_documents,
        dropped_documents=outcome.dropped_documents,
        request_id=outcome.request_id,
    )


def explain_from_proto(
    request: pb.ExplainRequest, deadline: float | None, request_id: str
) -> tuple[Query, Document, ExplainOptions]:
    violations: list[FieldViolation] = []
    query = Query(_parts(request.query.parts, "query", violations))
    document = Document(request.document.id, _parts(request.document.parts, "document", violations))
    if violations:
        raise InvalidInput(violations)
    options = ExplainOptions(
        instruction=request.instruction,
        grid_size=request.grid_size,
        include_query=request.include_query,
        deadline=deadline,
        request_id=request_id,
    )
    return query, document, options


def fragment(f: Fragment) -> pb.Fragment:
    return pb.Fragment(
        source=_SOURCES[f.source], part_index=f.part_index, text=f.text, start=f.start, end=f.end,
        x=f.x, y=f.y, width=f.width, height=f.height, attribution=f.attribution, occluded_score=f.occluded_score,
    )


def explain_response(outcome: ExplainOutcome) -> pb.ExplainResponse:
    return pb.ExplainResponse(
        score=outcome.score,
        logit=outcome.logit,
        band=_BANDS[outcome.band],
        fragments=[fragment(f) for f in outcome.fragments],
        usage=pb.Usage(**dataclasses.asdict(outcome.usage)),
        timings=pb.Timings(**dataclasses.asdict(outcome.timings)),
        model=outcome.model,
        request_id=outcome.request_id,
    )


def model_info(info: ModelInfo) -> pb.GetModelInfoResponse:
    limits = dataclasses.asdict(info.limits)
    limits["default_truncation"] = _TRUNCATION_TO_PB[limits["default_truncation"]]
    return pb.GetModelInfoResponse(
        model=info.model,
        dtype=info.dtype,
        attention_implementation=info.attention,
        devices=list(info.devices),
        limits=pb.Limits(**limits),
        default_instruction=info.default_instruction,
        band_thresholds=pb.BandThresholds(strong=info.bands.strong, medium=info.bands.medium),
        random_weights=info.random_weights,
        parameters=info.parameters,
        image_cache_bytes=info.image_cache_bytes,
        image_cache_capacity_bytes=info.image_cache_capacity_bytes,
        image_cache_hits=info.image_cache_hits,
        image_cache_misses=info.image_cache_misses,
        server_version=info.server_version,
        workers=info.workers,
        batch_invariant=info.batch_invariant,
        score_cache_bytes=info.score_cache.bytes,
        score_cache_capacity_bytes=info.score_cache.capacity_bytes,
        score_cache_entries=info.score_cache.entries,
        score_cache_hits=info.score_cache.hits,
        score_cache_misses=info.score_cache.misses,
        token_cache_bytes=info.token_cache_bytes,
        token_cache_capacity_bytes=info.token_cache_capacity_bytes,
        token_cache_hits=info.token_cache_hits,
        token_cache_misses=info.token_cache_misses,
    )
