"""Explain: one query and one document, their score, and what each fragment contributed to it.

A fragment's attribution is measured by occlusion: the full pair's score minus the score of the
pair with that fragment removed (a word or phrase of text) or masked with the image's mean colour
(a grid cell). The document's variants are documents of one job, behind the full document: they
share the query's prefix and batch together, so explaining a title of 40 words and one image of 16
cells costs about one batch of 57 documents. A variant of the query cannot share that prefix, so
each query fragment (`include_query`) is a job of its own; those run concurrently.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields

from ..engine.api import EngineClient
from ..engine.config import ImageLimits
from ..engine.errors import FieldViolation, InvalidInput
from ..engine.prompt.image_files import ImageRejected, image_key
from ..engine.types import Document, Part, Query, RequestStats, Score, TextPart, Timings, Usage
from . import fragments as fr
from .config import ServiceConfig
from .types import ExplainOptions, ExplainOutcome, Fragment

__all__ = ["Occlusion", "Plan", "explain", "plan"]

@dataclass(frozen=True)
class Occlusion:
    """One fragment, and its side's parts with that fragment occluded."""

    source: str  # "query" or "document"
    part_index: int
    parts: tuple[Part, ...]
    text: str = ""
    span: fr.Span | None = None
    box: fr.Box | None = None

    def fragment(self, full: float, occluded: float) -> Fragment:
        span, box = self.span or fr.Span(0, 0), self.box or fr.Box(0, 0, 0, 0)
        return Fragment(
            source=self.source, part_index=self.part_index, attribution=full - occluded, occluded_score=occluded,
            text=self.text, start=span.start, end=span.end, x=box.x, y=box.y, width=box.width, height=box.height,
        )


@dataclass(frozen=True)
class Plan:
    """What Explain scores: `document`, the pair's document with each image given with its decoded
    pixels (the engine does not decode it again), then each fragment's `occlusions`."""

    document: Document
    occlusions: list[Occlusion]


def plan(
    query: Query, document: Document, grid: int, include_query: bool, limit: int, limits: ImageLimits
) -> Plan:
    """The pair's document as the engine gets it (each image with the pixels decoded here for its
    cells), and every fragment of the pair (the query's first, when asked for), in order of part and
    position, each with its occluded parts. Text is merged into phrases to fit `limit`; image
    cells cannot be, so a grid whose cells alone do not fit is refused. Images are checked against
    `limits` (the engine's) before any pixel is decoded; a refused one is named as Rerank names it."""
    given = {"query": list(query.parts), "document": list(document.parts)}  # images get their pixels below
    sides = (["query"] if include_query else []) + ["document"]
    spans: dict[tuple[str, int], list[fr.Span]] = {}
    cells: dict[tuple[str, int], tuple[fr.Pixels, list[fr.Box]]] = {}
    for side in sides:
        for i, part in enumerate(given[side]):
            if isinstance(part, TextPart):
                spans[side, i] = fr.split_text(part.text)
            else:
                try:
                    pixels = fr.upright_rgb(part.data, limits)
                except ImageRejected as exc:
                    raise InvalidInput([FieldViolation(f"{side}.parts[{i}].image", str(exc))]) from None
                cells[side, i] = (pixels, fr.grid_boxes(pixels.shape[1], pixels.shape[0], grid))
                given[side][i] = fr.decoded_part(part, pixels)
    n_cells = sum(len(boxes) for _, boxes in cells.values())
    if n_cells + len(spans) > limit:
        raise InvalidInput([FieldViolation(
            "grid_size",
            f"{len(cells)} image(s) of {grid}x{grid} cells and {len(spans)} text part(s) need at least "
            f"{n_cells + len(spans)} fragments, over the limit of {limit}; ask for a smaller grid_size",
        )])
    keys = list(spans)
    for key, share in zip(keys, fr.share_budget([len(spans[k]) for k in keys], limit - n_cells)):
        spans[key] = fr.merge_spans(spans[key], share)

    out: list[Occlusion] = []
    for side in sides:
        parts = tuple(given[side])
        only = parts[0] if len(parts) == 1 else None
        if isinstance(only, TextPart) and len(spans.get((side, 0), ())) == 1:
            field = "include_query" if side == "query" else "document"
            raise InvalidInput([FieldViolation(
                field, f"the {side} is a single fragment ({only.text!r}); with it removed nothing is left to score"
            )])
        for i, part in enumerate(parts):
            if isinstance(part, TextPart):
                out += [
                    Occlusion(side, i, fr.text_variant(parts, i, span), text=part.text[span.start : span.end],
                              span=span)
                    for span in spans[side, i]
                ]
                continue
            pixels, boxes = cells[side, i]
            colour = fr.mean_colour(pixels)
            base = image_key(part)
            masked = fr.masked_pictures(pixels, base, boxes, colour)
            out += [Occlusion(side, i, fr.image_variant(parts, i, picture), box=box)
                    for box, picture in zip(boxes, masked)]
    return Plan(Document(document.id, tuple(given["document"])), out)


_JOB_DOCUMENT = re.compile(r"^documents\[\d+\]")


def _as_document_field(exc: InvalidInput) -> InvalidInput:
    """The engine names the job's documents `documents[k]`: the pair's document (k = 0) and its
    variants, made from it. Explain's request calls it `document`."""
    renamed = list(dict.fromkeys(
        FieldViolation(_JOB_DOCUMENT.sub("document", v.field), v.description) for v in exc.violations))
    return type(exc)(renamed)


async def _score_pair(engine: EngineClient, query: Query, document: Document, options: ExplainOptions) -> tuple[
    Score, RequestStats
]:
    job = await engine.open_job(query, options.instruction, deadline=options.deadline)
    try:
        await job.add_documents([(0, document)])
        job.close()
        scores = [s async for s in job.results()]
    except BaseException:
        job.cancel()
        raise
    return scores[0], job.stats


def _combined(stats: Sequence[RequestStats]) -> tuple[Usage, Timings]:
    """Usage adds up over the jobs; they ran concurrently, so their waits and GPU times are the
    longest of them, and their CPU preparation adds up."""
    usage = Usage(**{f.name: sum(getattr(s.usage, f.name) for s in stats) for f in fields(Usage)})
    timings = Timings(
        preprocess_ms=sum(s.timings.preprocess_ms for s in stats),
        queue_ms=max(s.timings.queue_ms for s in stats),
        inference_ms=max(s.timings.inference_ms for s in stats),
    )
    return usage, timings


async def explain(
    engine: EngineClient, config: ServiceConfig, query: Query, document: Document, options: ExplainOptions
) -> ExplainOutcome:
    started = time.perf_counter()
    grid = options.grid_size or config.explain_grid_size
    if not 0 <= options.grid_size <= config.explain_grid_size:
        raise InvalidInput([FieldViolation(
            "grid_size", f"{options.grid_size} is outside 0 (the default, {config.explain_grid_size}) to "
            f"{config.explain_grid_size}")])
    info = engine.info()
    # The document's variants and the full document are one job, under the engine's count limit.
    limit = min(config.max_explain_fragments, info.limits.max_documents_per_request - 1)

    # The query is prepared (and refused, if it must be) with the job's documents.
    job = await engine.open_job(query, options.instruction, deadline=options.deadline)
    limits = ImageLimits(max_bytes=info.limits.max_image_bytes, max_pixels=info.limits.max_image_pixels)
    query_tasks: list[asyncio.Task[tuple[Score, RequestStats]]] = []
    try:
        try:
            planned = await asyncio.to_thread(plan, query, document, grid, options.include_query, limit, limits)
        except InvalidInput as refused:
            if any(v.field.startswith("document.parts") for v in refused.violations):
                # A refused image: the engine's verdict on the whole document names every bad field,
                # as a Rerank of it would.
                try:
                    await job.add_documents([(0, document)])
                except InvalidInput as exc:
                    raise _as_document_field(exc) from None
            raise
        of_query = [o for o in planned.occlusions if o.source == "query"]
        of_document = [o for o in planned.occlusions if o.source == "document"]
        document = planned.document
        query_tasks = [
            asyncio.create_task(_score_pair(engine, Query(o.parts), document, options), name="lychee-explain-query")
            for o in of_query
        ]
        # The full document and its variants in one call: one batch, the variants sharing the
        # document's head (a full document scored first and alone was a pass of its own, ~13 ms).
        try:
            await job.add_documents(
                [(0, document)] + [(k, Document(document.id, o.parts)) for k, o in enumerate(of_document, 1)])
        except InvalidInput as exc:
            raise _as_document_field(exc) from None
        job.close()
        scores = {s.index: s async for s in job.results()}
        query_results = await asyncio.gather(*query_tasks)
    except BaseException:
        job.cancel()
        for task in query_tasks:
            task.cancel()
        raise

    full = scores[0]
    occluded = [score.score for score, _ in query_results] + [scores[k + 1].score for k in range(len(of_document))]
    usage, timings = _combined([job.stats, *(stats for _, stats in query_results)])
    timings.total_ms = (time.perf_counter() - started) * 1e3
    return ExplainOutcome(
        score=full.score,
        logit=full.logit,
        band=config.bands.band(full.score),
        fragments=[o.fragment(full.score, s) for o, s in zip(of_query + of_document, occluded)],
        usage=usage,
        timings=timings,
        model=info.model,
        request_id=options.request_id,
    )


