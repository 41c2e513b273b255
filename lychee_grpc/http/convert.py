"""JSON bodies <-> service types, for the REST routes: every client's request shape into one query,
documents and options; images from base64 or data: URLs; the service's field names (parts) back
into the request's JSON paths; and each client's response shape."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..service.chunking import ChunkSpan
from ..service.errors import FieldViolation, InvalidInput
from ..service.types import (
    Document,
    ExplainOutcome,
    Fragment,
    ImagePart,
    Part,
    Query,
    RankedResult,
    RerankOptions,
    RerankOutcome,
    TextPart,
    Usage,
)
from .schemas import Content, ContentInput, DocumentObject, QueryObject, RerankRequest, TeiRerankRequest

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")

JsonObject = dict[str, Any]  # a response body: JSON values of any kind

# Cohere bills a search unit per query and up to 100 documents; its clients may read the count.
SEARCH_UNIT_DOCUMENTS = 100


def decode_image(value: str, path: str) -> bytes:
    """The bytes of a base64 string or a base64 `data:` URL; InvalidInput naming `path` otherwise.
    URLs are not fetched: a server that fetches what callers name is a proxy into its network."""
    payload = value
    match = _DATA_URL.match(value)
    if match:
        if not match.group("b64"):
            raise InvalidInput([FieldViolation(path, "a data: URL must be base64 (data:image/png;base64,...)")])
        payload = value[match.end():]
    elif re.match(r"^[a-z][a-z0-9+.-]*://", value, re.IGNORECASE):
        raise InvalidInput([FieldViolation(path, "image URLs are not fetched; send base64 or a data: URL")])
    payload = _WHITESPACE.sub("", payload)
    if not payload:
        raise InvalidInput([FieldViolation(path, "the image is empty")])
    try:
        # Missing padding is common in hand-made base64; restore it rather than refuse.
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput([FieldViolation(path, "not valid base64")]) from None


@dataclass
class Converted:
    """One query or document as parts, with the JSON path each part came from."""

    parts: tuple[Part, ...]
    paths: tuple[str, ...]


def _image(value: str, path: str, violations: list[FieldViolation]) -> Part | None:
    try:
        return ImagePart(decode_image(value, path))
    except InvalidInput as exc:
        violations.extend(exc.violations)
        return None


def _from_object(obj: QueryObject, path: str, violations: list[FieldViolation], text: str | None) -> Converted:
    parts: list[Part] = []
    paths: list[str] = []
    if obj.image is not None:  # image first, as in the model's public evaluation code
        image = _image(obj.image, f"{path}.image", violations)
        if image is not None:
            parts.append(image)
            paths.append(f"{path}.image")
    if text is not None:
        parts.append(TextPart(text))
        paths.append(f"{path}.text")
    if not parts and obj.image is None and not any(v.field == path for v in violations):
        others = sorted(obj.model_extra or {}) if isinstance(obj, DocumentObject) else []
        kept = f" ({', '.join(others)}: kept as Cohere document fields; rank_fields scores them)" if others else ""
        violations.append(FieldViolation(path, f"needs text, image or both{kept}"))
    return Converted(tuple(parts), tuple(paths))


def _from_content(value: ContentInput, path: str, violations: list[FieldViolation]) -> Converted:
    parts: list[Part] = []
    paths: list[str] = []
    for k, item in enumerate(value.content):
        if item.type == "text":
            parts.append(TextPart(item.text))
            paths.append(f"{path}.content[{k}].text")
        else:
            where = f"{path}.content[{k}].image_url.url"
            image = _image(item.image_url.url, where, violations)
            if image is not None:
                parts.append(image)
                paths.append(where)
    return Converted(tuple(parts), tuple(paths))


def _cohere_text(doc: DocumentObject, path: str, rank_fields: Sequence[str] | None,
                 violations: list[FieldViolation]) -> str | None:
    """A Cohere document object's text: its `text`, or with rank_fields the named fields as
    `key: value` lines, in rank_fields' order (fields a document lacks are left out)."""
    extra = doc.model_extra or {}
    for key, value in extra.items():
        if not isinstance(value, str):
            violations.append(FieldViolation(f"{path}.{key}", f"expected a string (Cohere document fields are "
                                                             f"strings), got {json_type(value)}"))
    if not rank_fields:
        return doc.text
    fields = {"text": doc.text, **{k: v for k, v in extra.items() if isinstance(v, str)}}
    lines = [f"{key}: {fields[key]}" for key in rank_fields if fields.get(key) is not None]
    if not lines and doc.image is None:
        violations.append(FieldViolation(path, f"has none of rank_fields ({', '.join(rank_fields)})"))
        return None
    return "\n".join(lines) if lines else None


def convert_input(value: Any, path: str, violations: list[FieldViolation],
                  rank_fields: Sequence[str] | None = None) -> Converted:
    if isinstance(value, str):
        return Converted((TextPart(value),), (path,))
    if isinstance(value, ContentInput):
        return _from_content(value, path, violations)
    if isinstance(value, DocumentObject):
        return _from_object(value, path, violations, _cohere_text(value, path, rank_fields, violations))
    return _from_object(value, path, violations, value.text)


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return "an object"


def raise_if(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidInput(violations)


@dataclass
class Inputs:
    query: Query
    documents: list[Document]
    query_paths: tuple[str, ...]
    document_paths: list[tuple[str, ...]]

    def named_fields(self, exc: InvalidInput) -> InvalidInput:
        return named_fields(exc, self.query_paths, self.document_paths)


def rerank_inputs(query: Any, documents: Sequence[Any], rank_fields: Sequence[str] | None = None) -> Inputs:
    violations: list[FieldViolation] = []
    q = convert_input(query, "query", violations)
    docs: list[Document] = []
    paths: list[tuple[str, ...]] = []
    for i, value in enumerate(documents):
        d = convert_input(value, f"documents[{i}]", violations, rank_fields)
        doc_id = value.id if isinstance(value, DocumentObject) and value.id else str(i)
        docs.append(Document(doc_id, d.parts))
        paths.append(d.paths)
    raise_if(violations)
    return Inputs(Query(q.parts), docs, q.paths, paths)


# ---- options: every client's names for the same few settings -------------------------------------
def _refuse(field: str, why: str, violations: list[FieldViolation]) -> None:
    violations.append(FieldViolation(field, why))


def raw_scores(body: RerankRequest) -> bool:
    """vLLM's use_activation=false (or its older names) asks for the logit as the score."""
    return False in (body.use_activation, body.softmax, body.activation)


def rerank_options(body: RerankRequest, max_tokens_limit: Callable[[], int], **common: Any) -> RerankOptions:
    """The request's options, refusing what a known client may send but this server cannot mean
    (each named, with what it can do instead)."""
    violations: list[FieldViolation] = []
    if body.relevant_spans is not None and body.relevant_spans.mode == "enabled":
        _refuse("relevant_spans.mode", "relevant spans are not computed here; POST /v1/explain measures which "
                "fragments drove a score", violations)
    if body.truncation_side == "left":
        _refuse("truncation_side", "only right is served: the end of a document's text is cut", violations)
    if body.max_tokens_per_query:
        _refuse("max_tokens_per_query", "queries are never truncated here (0 or absent only)", violations)
    if body.mm_processor_kwargs:
        _refuse("mm_processor_kwargs", "image sizes are server settings (--max-image-model-pixels); send {} or "
                "leave it out", violations)
    if body.max_chunks_per_doc is not None and (body.truncation == "none" or body.max_tokens_per_doc):
        _refuse("max_chunks_per_doc", "chunking replaces truncation: leave out truncation and max_tokens_per_doc",
                violations)
    # Three names cap a document's tokens: ours, Cohere v2's / vLLM's, and vLLM's whole-prompt one
    # (here per document: the query is computed once per request and never cut).
    caps = {name: value for name, value in (
        ("max_tokens_per_document", body.max_tokens_per_document),
        ("max_tokens_per_doc", body.max_tokens_per_doc or None),
        ("truncate_prompt_tokens", body.truncate_prompt_tokens),
    ) if value is not None}
    if len(caps) > 1:
        _refuse(sorted(caps)[1], f"give one of {', '.join(sorted(caps))}", violations)
    raise_if(violations)
    truncation = body.truncation
    max_tokens = body.max_tokens_per_document or 0
    if body.max_tokens_per_doc:
        # Cohere and vLLM truncate to the number given; over the server's own limit, that is the limit.
        truncation, max_tokens = "end", min(body.max_tokens_per_doc, max_tokens_limit())
    elif body.truncate_prompt_tokens is not None:
        truncation = "end"
        max_tokens = 0 if body.truncate_prompt_tokens <= 0 else min(body.truncate_prompt_tokens, max_tokens_limit())
    return RerankOptions(
        instruction=body.instruction,
        top_n=body.top_n or 0,
        min_score=body.min_score,
        truncation=truncation,
        max_tokens_per_document=max_tokens,
        return_documents=bool(body.return_documents),
        **common,
    )


def tei_options(body: TeiRerankRequest, **common: Any) -> RerankOptions:
    if body.truncation_direction.lower() == "left":
        raise InvalidInput([FieldViolation("truncation_direction", "only right is served: the end of a text is cut")])
    truncation = None if body.truncate is None else ("end" if body.truncate else "none")
    return RerankOptions(truncation=truncation, return_documents=body.return_text, **common)


# ---- responses -------------------------------------------------------------------------------------
def usage(u: Usage) -> JsonObject:
    return {**dataclasses.asdict(u), "total_tokens": u.prompt_tokens}


def echo(value: Any) -> dict[str, Any]:
    """A document as the response gives it back: a string as {"text"}, vLLM's content as
    {"multi_modal": [...]} (vLLM's RerankDocument), an object as it was sent."""
    if isinstance(value, str):
        return {"text": value}
    if isinstance(value, ContentInput):
        return {"text": None, "multi_modal": [p.model_dump(exclude_none=True) for p in value.content]}
    return value.model_dump(exclude_none=True)


def meta(outcome: RerankOutcome, documents: int, version: str) -> JsonObject:
    return {
        "api_version": {"version": version},
        "billed_units": {"search_units": max(1, math.ceil(documents / SEARCH_UNIT_DOCUMENTS))},
        "tokens": {"input_tokens": outcome.usage.prompt_tokens, "output_tokens": 0},
    }


def rerank_result(r: RankedResult, document: Any | None, chunk: ChunkSpan | None, raw: bool) -> JsonObject:
    out: dict[str, Any] = {"index": r.index, "relevance_score": r.logit if raw else r.score, "band": r.band,
                           "logit": r.logit, "truncated": r.truncated, "cached": r.cached}
    if document is not None:
        out["document"] = echo(document)
    if chunk is not None:
        out["chunk"] = dataclasses.asdict(chunk)
    return out


def rerank_response(outcome: RerankOutcome, documents: Sequence[Any], *, echo_documents: bool, version: str,
                    chunks: dict[int, ChunkSpan] | None = None, raw: bool = False, scored: int = 0) -> JsonObject:
    chunks = chunks or {}
    return {
        "id": outcome.request_id,
        "model": outcome.model,
        "results": [rerank_result(r, documents[r.index] if echo_documents else None, chunks.get(r.index), raw)
                    for r in outcome.results],
        "meta": meta(outcome, scored or len(documents), version),
        "usage": usage(outcome.usage),
        "timings": dataclasses.asdict(outcome.timings),
        "dropped_documents": outcome.dropped_documents,
        "truncated_documents": outcome.truncated_documents,
    }


def tei_response(outcome: RerankOutcome, body: TeiRerankRequest) -> list[JsonObject]:
    out: list[JsonObject] = []
    for r in outcome.results:
        rank: JsonObject = {"index": r.index, "score": r.logit if body.raw_scores else r.score}
        if body.return_text:
            rank["text"] = body.texts[r.index]
        out.append(rank)
    return out


# ---- Explain ---------------------------------------------------------------------------------------
def as_content(value: str | Content) -> Content:
    return Content(text=value, image=None) if isinstance(value, str) else value


def fields_of(content: Content) -> list[str]:
    """The order parts are built in (image first), so fragment part indices map back to fields."""
    return [name for name in ("image", "text") if getattr(content, name) is not None]


def fragment(f: Fragment, query: Content, document: Content) -> JsonObject:
    names = fields_of(query if f.source == "query" else document)
    out = dataclasses.asdict(f)
    out["field"] = names[f.part_index] if f.part_index < len(names) else "text"
    return out


def explain_response(outcome: ExplainOutcome, query: Content, document: Content) -> JsonObject:
    return {
        "score": outcome.score,
        "logit": outcome.logit,
        "band": outcome.band,
        "fragments": [fragment(f, query, document) for f in outcome.fragments],
        "usage": usage(outcome.usage),
        "timings": dataclasses.asdict(outcome.timings),
        "model": outcome.model,
        "request_id": outcome.request_id,
    }


_PART_PATH = re.compile(r"^(?P<owner>query|document|documents\[(?P<i>\d+)\])\.parts\[(?P<k>\d+)\](\.(text|image))?")


def named_fields(exc: InvalidInput, query_paths: Sequence[str],
                 document_paths: Sequence[Sequence[str]] = ()) -> InvalidInput:
    """The service names fields as parts (`documents[3].parts[0].image`, the gRPC shape); a JSON
    caller sent `documents[3].image` (or `documents[3].content[1].image_url.url`), so that is the
    name it gets back. `document_paths[0]` names a single `document` (Explain)."""

    def rename(field: str) -> str:
        match = _PART_PATH.match(field)
        if not match:
            return field
        owner = match.group("owner")
        if owner == "query":
            paths: Sequence[str] = query_paths
        else:
            i = int(match.group("i") or 0)
            paths = document_paths[i] if i < len(document_paths) else ()
        k = int(match.group("k"))
        return paths[k] + field[match.end():] if k < len(paths) else field

    renamed = [FieldViolation(rename(v.field), v.description) for v in exc.violations]
    out = type(exc)(renamed)
    out.__cause__ = exc.__cause__
    return out
