"""JSON bodies <-> service types, for the REST routes: images from base64 or data: URLs, and
an object's text and image into ordered parts."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from ..service.errors import FieldViolation, InvalidInput
from ..service.types import (
    Document,
    ExplainOutcome,
    Fragment,
    ImagePart,
    Part,
    Query,
    RankedResult,
    RerankOutcome,
    TextPart,
    Usage,
)
from .schemas import Content

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")

JsonObject = dict[str, Any]  # a response body: JSON values of any kind


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


def fields_of(content: Content) -> list[str]:
    """The order parts are built in (image first), so fragment part indices map back to fields."""
    return [name for name in ("image", "text") if getattr(content, name) is not None]


def parts(content: Content, path: str, violations: list[FieldViolation]) -> tuple[Part, ...]:
    out: list[Part] = []
    for name in fields_of(content):
        if name == "image":
            try:
                out.append(ImagePart(decode_image(content.image or "", f"{path}.image")))
            except InvalidInput as exc:
                violations.extend(exc.violations)
        else:
            out.append(TextPart(content.text or ""))
    return tuple(out)


def query_from(content: Content, violations: list[FieldViolation], path: str = "query") -> Query:
    return Query(parts(content, path, violations))


def document_from(content: Content, violations: list[FieldViolation], path: str = "document") -> Document:
    return Document("0", parts(content, path, violations))


def documents_from(contents: Sequence[Content], violations: list[FieldViolation]) -> list[Document]:
    return [
        Document(getattr(c, "id", None) or str(i), parts(c, f"documents[{i}]", violations))
        for i, c in enumerate(contents)
    ]


def raise_if(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidInput(violations)


def echo(content: Content) -> dict[str, str]:
    return content.model_dump(exclude_none=True)


def usage(u: Usage) -> JsonObject:
    return {**dataclasses.asdict(u), "total_tokens": u.prompt_tokens}


def rerank_result(r: RankedResult, document: Content | None) -> JsonObject:
    out: JsonObject = {"index": r.index, "relevance_score": r.score, "band": r.band, "logit": r.logit,
                       "truncated": r.truncated}
    if document is not None:
        out["document"] = echo(document)
    return out


def rerank_response(outcome: RerankOutcome, documents: Sequence[Content] | None) -> JsonObject:
    return {
        "id": outcome.request_id,
        "model": outcome.model,
        "results": [rerank_result(r, documents[r.index] if documents is not None else None) for r in outcome.results],
        "usage": usage(outcome.usage),
        "timings": dataclasses.asdict(outcome.timings),
        "dropped_documents": outcome.dropped_documents,
        "truncated_documents": outcome.truncated_documents,
    }


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


def named_fields(
    exc: InvalidInput, query: Content, documents: Sequence[Content] = (), document: Content | None = None
) -> InvalidInput:
    """The service names fields as parts (`documents[3].parts[0].image`, the gRPC shape); a JSON
    caller sent `documents[3].image`, so that is the name it gets back."""

    def rename(field: str) -> str:
        match = _PART_PATH.match(field)
        if not match:
            return field
        owner = match.group("owner")
        if owner == "query":
            content: Content | None = query
        elif owner == "document":
            content = document
        else:
            i = int(match.group("i"))
            content = documents[i] if i < len(documents) else None
        names = fields_of(content) if content is not None else []
        k = int(match.group("k"))
        if k >= len(names):
            return field
        return f"{owner}.{names[k]}{field[match.end():]}"

    renamed = [FieldViolation(rename(v.field), v.description) for v in exc.violations]
    out = type(exc)(renamed)
    out.__cause__ = exc.__cause__
    return out
