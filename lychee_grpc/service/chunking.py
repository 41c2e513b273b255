"""Cohere v1's `max_chunks_per_doc`: a long text document is cut into chunks, every chunk is
scored, and the document scores as its best chunk; the result says which chunk that was.

The rule, in one place:
- A chunk holds at most `limit - MARGIN` characters, where `limit` is the document token limit in
  effect (the request's `max_tokens_per_document`, else the server's) and MARGIN leaves room for
  the prompt's own tokens around a document. Qwen's byte-level BPE gives at most about one token
  per character of ordinary text (English ~4 characters a token, Chinese ~1.4; a digit is one),
  so a chunk fits the limit; one that does not (a run of emoji) has its end cut and says so.
- Chunks end after the last whitespace in their second half (no word is split when there is
  one), else at the size; chunks tile the text, so their texts put together give it back.
- Only the first `max_chunks_per_doc` chunks are scored; a document with more is `truncated`.
- Documents with an image are not chunked (images are never cut): with `max_chunks_per_doc`
  they are refused, naming the document.
- All chunks of all documents go to the model as one rerank call (one queue, one admission
  permit); top_n and min_score then apply to documents, not chunks.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..engine.types import Document, Query, RequestStats, Score, TextPart
from .errors import FieldViolation, InvalidInput, TooLarge
from .rerank import Service
from .types import RerankOptions, RerankOutcome, Served

MARGIN = 32

_SPACE = re.compile(r"\s")


@dataclass(frozen=True)
class ChunkSpan:
    """The chunk a document scored by: its number and its [start, end) code points."""

    index: int
    start: int
    end: int
    chunks: int  # chunks of the document that were scored


@dataclass
class ChunkedOutcome:
    outcome: RerankOutcome  # one result per document, ranked, top_n and min_score applied
    chunks: dict[int, ChunkSpan]  # document index -> the chunk its score comes from


def chunk_spans(text: str, size: int) -> list[tuple[int, int]]:
    """[start, end) spans of at most `size` code points tiling `text`, each ending after the last
    whitespace of its second half when there is one."""
    spans: list[tuple[int, int]] = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = max((m.end() for m in _SPACE.finditer(text, start + size // 2, end)), default=0)
            end = cut or end
        spans.append((start, end))
        start = end
    return spans or [(0, 0)]


def _text_of(document: Document, index: int) -> str:
    if any(not isinstance(p, TextPart) for p in document.parts):
        raise InvalidInput([FieldViolation(
            f"documents[{index}]", "max_chunks_per_doc cuts text documents only; this one has an image")])
    return "".join(p.text for p in document.parts if isinstance(p, TextPart))


async def rerank_chunked(
    service: Service, query: Query, documents: Sequence[Document], options: RerankOptions, max_chunks: int
) -> ChunkedOutcome:
    started = time.perf_counter()
    info = service.engine.info()
    limit = options.max_tokens_per_document or info.limits.max_tokens_per_document
    size = max(1, limit - MARGIN)
    chunks: list[Document] = []
    owners: list[tuple[int, int, int, int]] = []  # per chunk: document index, chunk number, start, end
    cut: dict[int, bool] = {}
    violations: list[FieldViolation] = []
    for i, doc in enumerate(documents):
        try:
            text = _text_of(doc, i)
        except InvalidInput as exc:
            violations.extend(exc.violations)
            continue
        pieces = chunk_spans(text, size)
        cut[i] = len(pieces) > max_chunks
        for k, (start, end) in enumerate(pieces[:max_chunks]):
            chunks.append(Document(f"{doc.id}#{k}", (TextPart(text[start:end]),)))
            owners.append((i, k, start, end))
    if violations:
        raise InvalidInput(violations)
    if len(chunks) > info.limits.max_documents_per_request:
        raise TooLarge([FieldViolation(
            "max_chunks_per_doc", f"{len(documents)} documents make {len(chunks)} chunks, over the server's limit of "
            f"{info.limits.max_documents_per_request} per request")])
    # Every chunk is scored (selection applies to documents), and a chunk the BPE made longer than
    # the limit has its end cut rather than failing the request.
    per_chunk = dataclasses.replace(options, top_n=0, min_score=None, truncation="end")
    try:
        scored = await service.rerank(query, chunks, per_chunk)
    except InvalidInput as exc:
        raise type(exc)([_owner_field(v, owners) for v in exc.violations]) from exc
    # Results come best first (ties: the lower index, so the earlier chunk): a document's first
    # result is its best chunk.
    best: dict[int, int] = {}  # document -> position in scored.results
    for position, result in enumerate(scored.results):
        best.setdefault(owners[result.index][0], position)
    scores: list[Score] = []
    spans: dict[int, ChunkSpan] = {}
    counts = {i: sum(1 for o in owners if o[0] == i) for i in best}
    for doc_index, position in best.items():
        result = scored.results[position]
        _, k, start, end = owners[result.index]
        scores.append(Score(index=doc_index, id=documents[doc_index].id, score=result.score, logit=result.logit,
                            truncated=result.truncated or cut[doc_index], cached=result.cached))
        spans[doc_index] = ChunkSpan(k, start, end, counts[doc_index])
    stats = RequestStats(usage=scored.usage, timings=scored.timings)
    served = Served(len(scores), sum(1 for s in scores if s.truncated), stats)
    return ChunkedOutcome(service.outcome_of(scores, stats, options, started, served), spans)


def _owner_field(v: FieldViolation, owners: list[tuple[int, int, int, int]]) -> FieldViolation:
    """A chunk's violation (`documents[c]...`) named by its document."""
    match = re.match(r"^documents\[(\d+)\]", v.field)
    if not match or int(match.group(1)) >= len(owners):
        return v
    return FieldViolation(f"documents[{owners[int(match.group(1))][0]}]{v.field[match.end():]}", v.description)
