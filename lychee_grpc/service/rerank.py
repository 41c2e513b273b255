"""Rerank, RerankStream, Explain and model info: their meaning, once, for every transport."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from typing import Protocol

from .. import __version__
from ..engine.api import EngineClient, EngineInfo, Truncation
from ..engine.errors import FieldViolation, InvalidInput, NotReady, TooLarge
from ..engine.types import Document, Query, RequestStats, Score
from ..lifecycle import Lifecycle
from .admission import Admission
from .config import ServiceConfig
from .explain import explain as explain_pair
from .pairs import JobOptions, PairRequest, PairScores
from .score_cache import PairKeys, ScoreCache, ScoreCacheStats, model_key
from .types import (
    TRUNCATIONS,
    ExplainOptions,
    ExplainOutcome,
    Limits,
    ModelInfo,
    RankedResult,
    RerankOptions,
    RerankOutcome,
    Served,
)

log = logging.getLogger(__name__)


class ServiceObserver(Protocol):
    def request_finished(self, method: str, documents: int, stats: RequestStats, truncated: int) -> None:
        """Once per request that was scored, whichever transport carried it."""


class Service:
    def __init__(
        self,
        lifecycle: Lifecycle,
        config: ServiceConfig | None = None,
        engine: EngineClient | None = None,
        observers: Sequence[ServiceObserver] = (),
    ):
        self.lifecycle = lifecycle
        self.config = config or ServiceConfig()
        self._engine = engine
        self.admission = Admission(self.config.max_concurrent_requests)
        self.observers = list(observers)
        self.pairs = PairScores(ScoreCache(self.config.score_cache_bytes))
        self._static: tuple[EngineClient, EngineInfo, bytes] | None = None

    def attach(self, engine: EngineClient) -> None:
        """The engine, once loaded; until then the lifecycle refuses every request."""
        self._engine = engine

    @property
    def engine(self) -> EngineClient:
        if self._engine is None:
            raise NotReady("the model is loading; retry shortly")
        return self._engine

    def _info(self) -> tuple[EngineInfo, bytes]:
        """The engine's info as the request path reads it (model, limits, default instruction:
        fixed once loaded, so read once per engine) and the model's share of the cache keys."""
        engine = self.engine
        if self._static is None or self._static[0] is not engine:
            info = engine.info()
            self._static = (engine, info, model_key(info))
        return self._static[1], self._static[2]

    def score_cache_stats(self) -> ScoreCacheStats:
        return self.pairs.stats()

    # ---- options ------------------------------------------------------------------------
    def _check_options(self, options: RerankOptions, prefix: str = "") -> None:
        violations: list[FieldViolation] = []
        if options.top_n < 0:
            violations.append(FieldViolation(f"{prefix}top_n", "must be 0 (all) or positive"))
        if options.min_score is not None and not 0.0 <= options.min_score <= 1.0:
            violations.append(FieldViolation(f"{prefix}min_score", f"{options.min_score} is outside [0, 1]"))
        if options.truncation is not None and options.truncation not in TRUNCATIONS:
            violations.append(FieldViolation(f"{prefix}truncation", f"must be one of {', '.join(TRUNCATIONS)}"))
        if options.max_tokens_per_document < 0:
            violations.append(FieldViolation(f"{prefix}max_tokens_per_document", "must be 0 or positive"))
        elif options.max_tokens_per_document:
            # The one check of the request's token limit: the engine takes it as given.
            limit = self._info()[0].limits.max_tokens_per_document
            if options.max_tokens_per_document > limit:
                violations.append(FieldViolation(
                    f"{prefix}max_tokens_per_document",
                    f"{options.max_tokens_per_document} is over the server's limit of {limit}"))
        if violations:
            raise InvalidInput(violations)

    def _result(self, score: Score) -> RankedResult:
        return RankedResult(
            index=score.index,
            id=score.id,
            score=score.score,
            logit=score.logit,
            band=self.config.bands.band(score.score),
            truncated=score.truncated,
            cached=score.cached,
        )

    def _check_count(self, documents: int) -> None:
        """The one check of the documents-per-request limit (a stream's count so far)."""
        limit = self._info()[0].limits.max_documents_per_request
        if documents > limit:
            raise TooLarge([FieldViolation("documents", f"{documents} documents, over the limit of {limit}")])

    def _pairs_of(self, query: Query, options: RerankOptions) -> PairRequest:
        """The request's documents, answered from the score cache where it holds them (pairs.py)."""
        info, model = self._info()
        truncation = options.truncation or self.config.default_truncation
        # The key holds the effective settings: the server's limit and instruction when the request sets none.
        keys = PairKeys(model, truncation, options.max_tokens_per_document or info.limits.max_tokens_per_document,
                        options.instruction or info.default_instruction, query)
        return PairRequest(self.pairs, self.engine, query, keys, JobOptions(
            options.instruction, Truncation(truncation), options.max_tokens_per_document, options.deadline))

    def _finished(self, method: str, scores: list[Score], stats: RequestStats) -> Served:
        served = Served(len(scores), sum(1 for s in scores if s.truncated), stats)
        for observer in self.observers:
            try:
                observer.request_finished(method, served.documents, stats, served.truncated)
            except Exception:  # an observer never breaks a request
                log.exception("service observer failed")
        return served

    def outcome_of(
        self, scores: list[Score], stats: RequestStats, options: RerankOptions, started: float, served: Served
    ) -> RerankOutcome:
        """What a request answers once its documents are scored: best first, min_score, top_n,
        bands, total time (also for verbs built on rerank, such as chunking.py's)."""
        ranked = best_first(scores)
        dropped = 0
        if options.min_score is not None:
            kept = [s for s in ranked if s.score >= options.min_score]
            dropped = len(ranked) - len(kept)
            ranked = kept
        if options.top_n > 0:
            ranked = ranked[: options.top_n]
        stats.timings.total_ms = (time.perf_counter() - started) * 1e3
        return RerankOutcome(
            results=[self._result(s) for s in ranked],
            usage=stats.usage,
            timings=stats.timings,
            model=self._info()[0].model,
            truncated_documents=served.truncated,
            dropped_documents=dropped,
            request_id=options.request_id,
            served=served,
        )

    # ---- verbs --------------------------------------------------------------------------
    async def rerank(self, query: Query, documents: Sequence[Document], options: RerankOptions) -> RerankOutcome:
        started = time.perf_counter()
        with self.lifecycle.request(), self.admission.permit():
            self._check_options(options)
            if not documents:
                raise InvalidInput([FieldViolation("documents", "at least one document is required")])
            self._check_count(len(documents))
            job = self._pairs_of(query, options)
            try:
                await job.add_documents(list(enumerate(documents)))
                job.close()
                scores = [s async for batch in job.result_batches() for s in batch]
            finally:
                job.leave()
            stats = job.stats
            served = self._finished("Rerank", scores, stats)
            return self.outcome_of(scores, stats, options, started, served)

    async def rerank_stream(
        self,
        query: Query,
        options: RerankOptions,
        documents: AsyncIterator[Sequence[Document]],
    ) -> AsyncIterator[RankedResult | RerankOutcome]:
        """Yields each document's result as soon as it is scored, then the final outcome once
        `documents` is exhausted and every document is scored. An error raised by `documents`
        (a malformed message) ends the stream with that error; so does a stream with no
        document, like a unary call with none."""
        started = time.perf_counter()
        with self.lifecycle.request(), self.admission.permit():
            self._check_options(options, "options.")
            job = self._pairs_of(query, options)
            received = 0

            async def read() -> None:
                nonlocal received
                try:
                    async for chunk in documents:
                        if chunk:
                            self._check_count(received + len(chunk))
                            await job.add_documents([(received + k, doc) for k, doc in enumerate(chunk)])
                            received += len(chunk)
                    if received == 0:
                        raise InvalidInput([FieldViolation("documents", "at least one document is required")])
                    job.close()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    job.fail(exc)

            reader = asyncio.create_task(read(), name="lychee-stream-reader")
            scores: list[Score] = []
            try:
                async for score in job.results():
                    scores.append(score)
                    yield self._result(score)
            finally:
                if not reader.done():
                    reader.cancel()
                job.leave()
            stats = job.stats
            served = self._finished("RerankStream", scores, stats)
            yield self.outcome_of(scores, stats, options, started, served)

    async def explain(self, query: Query, document: Document, options: ExplainOptions) -> ExplainOutcome:
        """The pair's score and each fragment's attribution, measured by occlusion (explain.py)."""
        with self.lifecycle.request(), self.admission.permit():
            return await explain_pair(self.engine, self.config, query, document, options)

    def model_info(self) -> ModelInfo:
        self.lifecycle.check()
        info = self.engine.info()
        config = self.config
        return ModelInfo(
            model=info.model,
            dtype=info.dtype,
            attention=info.attention,
            devices=info.devices,
            limits=Limits(
                **asdict(info.limits),
                max_concurrent_requests=config.max_concurrent_requests,
                max_queue_tokens=config.max_queue_tokens,
                default_truncation=config.default_truncation,
                max_explain_fragments=config.max_explain_fragments,
                explain_grid_size=config.explain_grid_size,
            ),
            default_instruction=info.default_instruction,
            bands=config.bands,
            random_weights=info.random_weights,
            parameters=info.parameters,
            image_cache_bytes=info.image_cache.bytes,
            image_cache_capacity_bytes=info.image_cache.capacity_bytes,
            image_cache_hits=info.image_cache.hits,
            image_cache_misses=info.image_cache.misses,
            server_version=__version__,
            workers=self.engine.workers,
            batch_invariant=info.batch_invariant,
            score_cache=self.pairs.stats(),
            token_cache_bytes=info.token_cache.bytes,
            token_cache_capacity_bytes=info.token_cache.capacity_bytes,
            token_cache_hits=info.token_cache.hits,
            token_cache_misses=info.token_cache.misses,
        )


def best_first(scores: Sequence[Score]) -> list[Score]:
    """The order of results, the one rule: best score first; ties by logit, then by arrival."""
    return sorted(scores, key=lambda s: (-s.score, -s.logit, s.index))
