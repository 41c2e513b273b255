"""Explain: one query and one document, their score, and what each fragment contributed to it.

A fragment's attribution is measured by occlusion: the full pair's score minus the score of the
pair with that fragment removed (a word or phrase of text) or masked with the image's mean colour
(a grid cell). The document's variants are documents of one job, behind the full document: they
share the query's prefix and batch together, so explaining a title of 40 words and one image of 16
cells costs about one batch of 57 documents. The text variants go first, while the image's cells
are masked: the GPU starts on them and the full document (whose head they share) ~10 ms sooner,
and the cells follow as a second batch. A variant of the query cannot share that prefix, so each
query fragment (`include_query`) is a job of its own; those run concurrently.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from itertools import accumulate

from ..engine.api import EngineClient, JobHandle
from ..engine.config import ImageLimits
from ..engine.errors import FieldViolation, InvalidInput
from ..engine.prompt.image_files import ImageRejected, image_key
from ..engine.types import Document, ImagePart, Part, Query, RequestStats, Score, TextPart, Timings, Usage
from . import fragments as fr
from .config import ServiceConfig
from .types import ExplainOptions, ExplainOutcome, Fragment

__all__ = ["Cells", "Layout", "Occlusion", "explain", "lay_out", "plan"]


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
class Cells:
    """An image part's grid cells before they are masked: how many there are is known from the
    image's header, their pixels only once it is decoded (`occlusions`)."""

    source: str
    part_index: int
    parts: tuple[Part, ...]
    grid: int
    count: int

    def occlusions(self, limits: ImageLimits) -> list[Occlusion]:
        """The cells, row by row, each with its copy of the parts (the image's mean colour in it)."""
        part = self.parts[self.part_index]
        assert isinstance(part, ImagePart)
        try:
            pixels = fr.upright_rgb(part.data, limits)
        except ImageRejected as exc:
            raise InvalidInput([FieldViolation(f"{self.source}.parts[{self.part_index}].image", str(exc))]) from None
        boxes = fr.grid_boxes(pixels.shape[1], pixels.shape[0], self.grid)
        assert len(boxes) == self.count  # the header's size, perhaps turned: the same count
        pictures = fr.masked_pictures(pixels, image_key(part), boxes, fr.mean_colour(pixels))
        return [Occlusion(self.source, self.part_index, fr.image_variant(self.parts, self.part_index, picture), box=box)
                for box, picture in zip(boxes, pictures)]


@dataclass(frozen=True)
class Layout:
    """Every fragment of the pair in the answer's order (the query's first, when asked for), its
    text fragments ready and each image's cells still to be masked."""

    slots: tuple[Occlusion | Cells, ...]

    def masked(self, limits: ImageLimits) -> list[list[Occlusion]]:
        """The cells of each `Cells` slot, in order (the images decoded here)."""
        return [slot.occlusions(limits) for slot in self.slots if isinstance(slot, Cells)]

    def complete(self, masked: Sequence[list[Occlusion]]) -> list[Occlusion]:
        """Every fragment in order, `masked` (as `masked` returns it) in place of the cells."""
        cells = iter(masked)
        return [o for slot in self.slots for o in (next(cells) if isinstance(slot, Cells) else [slot])]


def lay_out(
    query: Query, document: Document, grid: int, include_query: bool, limit: int, limits: ImageLimits
) -> Layout:
    """Every fragment of the pair (the query's first, when asked for), in order of part and
    position, text fragments with their occluded parts. Text is merged into phrases to fit
    `limit`; image cells cannot be, so a grid whose cells do not fit is refused. Images are
    checked against `limits` (the engine's) from their headers, before any pixel is decoded; a
    refused one is named as Rerank names it."""
    sides = ([("query", query.parts)] if include_query else []) + [("document", document.parts)]
    spans: dict[tuple[str, int], list[fr.Span]] = {}
    counts: dict[tuple[str, int], int] = {}
    for side, parts in sides:
        for i, part in enumerate(parts):
            if isinstance(part, TextPart):
                spans[side, i] = fr.split_text(part.text)
            else:
                try:
                    width, height = fr.declared_size(part.data, limits)
                except ImageRejected as exc:
                    raise InvalidInput([FieldViolation(f"{side}.parts[{i}].image", str(exc))]) from None
                counts[side, i] = len(fr.grid_boxes(width, height, grid))
    n_cells = sum(counts.values())
    if n_cells + len(spans) > limit:
        raise InvalidInput([FieldViolation(
            "grid_size",
            f"{len(counts)} image(s) of {grid}x{grid} cells and {len(spans)} text part(s) need at least "
            f"{n_cells + len(spans)} fragments, over the limit of {limit}; ask for a smaller grid_size",
        )])
    keys = list(spans)
    for key, share in zip(keys, fr.share_budget([len(spans[k]) for k in keys], limit - n_cells)):
        spans[key] = fr.merge_spans(spans[key], share)

    slots: list[Occlusion | Cells] = []
    for side, parts in sides:
        only = parts[0] if len(parts) == 1 else None
        if isinstance(only, TextPart) and len(spans.get((side, 0), ())) == 1:
            field = "include_query" if side == "query" else "document"
            raise InvalidInput([FieldViolation(
                field, f"the {side} is a single fragment ({only.text!r}); with it removed nothing is left to score"
            )])
        for i, part in enumerate(parts):
            if isinstance(part, TextPart):
                slots += [
                    Occlusion(side, i, fr.text_variant(parts, i, span), text=part.text[span.start : span.end],
                              span=span)
                    for span in spans[side, i]
                ]
            else:
                slots.append(Cells(side, i, tuple(parts), grid, counts[side, i]))
    return Layout(tuple(slots))


def plan(
    query: Query, document: Document, grid: int, include_query: bool, limit: int, limits: ImageLimits
) -> list[Occlusion]:
    """`lay_out`, its cells masked: every fragment of the pair with its occluded parts, in order."""
    laid = lay_out(query, document, grid, include_query, limit, limits)
    return laid.complete(laid.masked(limits))


_JOB_DOCUMENT = re.compile(r"^documents\[(\d+)\]")


def _as_document_field(exc: InvalidInput) -> InvalidInput:
    """The engine names the job's documents `documents[k]`: the pair's document (k = 0) and its
    variants, made from it. Explain's request calls it `document`. A variant's fault is its
    document's, named at the document's parts (a removed text part moves the parts after it): where
    the full document was refused, that verdict alone is the answer, as a Rerank of it gives."""
    own = [v for v in exc.violations if (m := _JOB_DOCUMENT.match(v.field)) is not None and m[1] == "0"]
    renamed = list(dict.fromkeys(
        FieldViolation(_JOB_DOCUMENT.sub("document", v.field), v.description) for v in own or exc.violations))
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


async def _add(job: JobHandle, documents: list[tuple[int, Document]]) -> None:
    try:
        await job.add_documents(documents)
    except InvalidInput as exc:
        raise _as_document_field(exc) from None


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
    query_tasks: dict[int, asyncio.Task[tuple[Score, RequestStats]]] = {}
    masking: asyncio.Task[list[list[Occlusion]]] | None = None
    try:
        try:
            laid = await asyncio.to_thread(lay_out, query, document, grid, options.include_query, limit, limits)
        except InvalidInput as refused:
            if any(v.field.startswith("document.parts") for v in refused.violations):
                # A refused image: the engine's verdict on the whole document names every bad field,
                # as a Rerank of it would.
                await _add(job, [(0, document)])
            raise
        # Each slot's first place among the answer's fragments; the query's come first. A document
        # fragment at place p is document p - n_query + 1 of the job, after the full document (0).
        places = list(accumulate((slot.count if isinstance(slot, Cells) else 1 for slot in laid.slots), initial=0))
        n_query = sum(slot.count if isinstance(slot, Cells) else 1 for slot in laid.slots if slot.source == "query")

        def score(occlusions: Sequence[tuple[int, Occlusion]]) -> list[tuple[int, Document]]:
            """Starts each query fragment's own job; returns the document fragments as the job's documents."""
            for place, o in occlusions:
                if o.source == "query":
                    query_tasks[place] = asyncio.create_task(
                        _score_pair(engine, Query(o.parts), document, options), name="lychee-explain-query")
            return [(place - n_query + 1, Document(document.id, o.parts)) for place, o in occlusions
                    if o.source == "document"]

        cells = [(place, slot) for place, slot in zip(places, laid.slots) if isinstance(slot, Cells)]
        # The cells are masked off the event loop while the text variants are scored: with the full
        # document (whose head they share), they are a first batch, and the GPU starts sooner.
        if cells:
            masking = asyncio.create_task(asyncio.to_thread(laid.masked, limits))
            # Its error is raised where it is awaited; a request refused first never awaits it.
            masking.add_done_callback(lambda task: task.cancelled() or task.exception())
        texts = score([(place, slot) for place, slot in zip(places, laid.slots) if isinstance(slot, Occlusion)])
        if texts or not cells:
            await _add(job, [(0, document), *texts])
        if masking is not None:
            masked = await masking
            variants = score([(place + j, o) for (place, _), of_image in zip(cells, masked)
                              for j, o in enumerate(of_image)])
            # Without text variants the full document waits for the cells: alone, it was a pass of its own.
            await _add(job, variants if texts else [(0, document), *variants])
        else:
            masked = []
        job.close()
        scores = {s.index: s async for s in job.results()}
        query_scores = dict(zip(query_tasks, await asyncio.gather(*query_tasks.values())))
    except BaseException:
        job.cancel()
        for task in query_tasks.values():
            task.cancel()
        if masking is not None:
            masking.cancel()
        raise

    full = scores[0]
    occlusions = laid.complete(masked)
    occluded = [query_scores[p][0].score if p < n_query else scores[p - n_query + 1].score
                for p in range(len(occlusions))]
    usage, timings = _combined([job.stats, *(stats for _, stats in query_scores.values())])
    timings.total_ms = (time.perf_counter() - started) * 1e3
    return ExplainOutcome(
        score=full.score,
        logit=full.logit,
        band=config.bands.band(full.score),
        fragments=[o.fragment(full.score, s) for o, s in zip(occlusions, occluded)],
        usage=usage,
        timings=timings,
        model=info.model,
        request_id=options.request_id,
    )
