"""Protobuf <-> domain objects. The only module that reads or builds lychee.v1 messages."""

from __future__ import annotations

from collections.abc import Sequence

from .engine.engine import ModelInfo, Ranking
from .engine.errors import FieldViolation, InvalidInput
from .engine.types import Document, ImagePart, Part, Query, Score, TextPart
from .proto import lychee_pb2 as pb
from .service.bands import BandThresholds

_BANDS = {
    "strong": pb.RELEVANCE_BAND_STRONG,
    "medium": pb.RELEVANCE_BAND_MEDIUM,
    "weak": pb.RELEVANCE_BAND_WEAK,
}


def _parts(parts, path: str, violations: list[FieldViolation]) -> tuple[Part, ...]:
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


def query_from_proto(query: pb.Query, has_query: bool) -> Query:
    violations: list[FieldViolation] = []
    if not has_query or not query.parts:
        raise InvalidInput([FieldViolation("query.parts", "query must have at least one part")])
    parts = _parts(query.parts, "query", violations)
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


def result(score: Score, bands: BandThresholds, document: pb.Document | None = None) -> pb.RerankResult:
    msg = pb.RerankResult(
        index=score.index,
        id=score.id,
        score=score.score,
        band=_BANDS[bands.band(score.score)],
        logit=score.logit,
    )
    if document is not None:
        msg.document.CopyFrom(document)
    return msg


def rerank_response(
    ranking: Ranking,
    bands: BandThresholds,
    model: str,
    documents: Sequence[pb.Document] | None = None,
) -> pb.RerankResponse:
    usage, timings = ranking.stats.usage, ranking.stats.timings
    return pb.RerankResponse(
        results=[
            result(s, bands, documents[s.index] if documents is not None else None) for s in ranking.scores
        ],
        usage=pb.Usage(
            prompt_tokens=usage.prompt_tokens,
            computed_tokens=usage.computed_tokens,
            images=usage.images,
            cached_images=usage.cached_images,
        ),
        timings=pb.Timings(
            preprocess_ms=timings.preprocess_ms,
            queue_ms=timings.queue_ms,
            inference_ms=timings.inference_ms,
            total_ms=timings.total_ms,
        ),
        model=model,
    )


def model_info(info: ModelInfo, version: str) -> pb.GetModelInfoResponse:
    return pb.GetModelInfoResponse(
        model=info.model,
        dtype=info.dtype,
        attention_implementation=info.attention,
        devices=list(info.devices),
        limits=pb.Limits(
            max_documents_per_request=info.max_documents_per_request,
            max_tokens_per_document=info.max_tokens_per_document,
            max_query_tokens=info.max_query_tokens,
            max_image_bytes=info.max_image_bytes,
            max_image_pixels=info.max_image_pixels,
            min_image_model_pixels=info.min_image_model_pixels,
            max_image_model_pixels=info.max_image_model_pixels,
            max_instruction_tokens=info.max_instruction_tokens,
        ),
        default_instruction=info.default_instruction,
        band_thresholds=pb.BandThresholds(strong=info.bands.strong, medium=info.bands.medium),
        random_weights=info.random_weights,
        parameters=info.parameters,
        image_cache_bytes=info.image_cache_bytes,
        image_cache_capacity_bytes=info.image_cache_capacity_bytes,
        image_cache_hits=info.image_cache_hits,
        image_cache_misses=info.image_cache_misses,
        server_version=version,
    )
