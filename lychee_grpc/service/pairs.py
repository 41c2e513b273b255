"""A request's documents answered with as little engine work as possible: from the pair-score
cache (score_cache.py), from an identical document earlier in the same request (scored once),
or from the same pair already queued or running for another request (single flight). Only what
is left goes to an engine job, and its scores fill the cache and reach every waiter.

The engine job a request opens belongs to the pairs it computes, not to the request: a request
that leaves (done, failed, cancelled or past its deadline) stops waiting on its pairs, and the
job is cancelled only once no request waits on any pair it has still to score, so cancelling one
waiter never cancels work another waits for. When another request's job fails (its deadline, its
error), a request that waited on one of its pairs scores the pair itself, with its own deadline,
and gets its own errors (named by its own document indices).

Each document is answered one way, counted in its request's usage: `cached` (the cache),
`deduplicated` (an identical document's computation: earlier in the request, or another
request's), or computed by this request's job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import Enum

from ..engine.api import EngineClient, IndexedDocument, JobHandle, Truncation
from ..engine.types import Document, ImagePart, Query, RequestStats, Score
from .errors import Cancelled, DeadlineExpired
from .score_cache import PairKeys, ScoreCache, ScoreCacheStats, StoredScore

# How long past its deadline a request waits for a pair before it gives up (its own engine job
# fails with DeadlineExpired by itself; this bounds waiting on another request's work).
DEADLINE_GRACE_SECONDS = 0.25


class Source(Enum):
    CACHED = "cached"  # in the cache when looked up
    JOINED = "joined"  # queued or running for another request
    COMPUTED = "computed"  # by this request's job


@dataclass(eq=False)
class Flight:
    """One pair queued or running in a job, and everyone waiting for its result."""

    key: bytes
    work: EngineWork
    index: int  # the document's index in the job (its request's index)
    waiters: int = 1
    tokens: int | None = None  # prompt tokens, once the job has taken the document
    score: Score | None = None  # once scored
    result: asyncio.Future[StoredScore] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def release(self) -> None:
        """One waiter stops waiting."""
        self.waiters -= 1
        if self.waiters <= 0:
            self.work.cancel_if_unwatched()


class EngineWork:
    """One engine job scoring pairs for whoever waits on them. Its results are read by a task of
    its own, so that the request that opened it can leave while others still wait."""

    def __init__(self, pairs: PairScores, job: JobHandle):
        self.pairs = pairs
        self.job = job
        self.flights: dict[int, Flight] = {}
        self.closed = False
        self.cancelled = False
        self.reader = asyncio.create_task(self._read(), name="lychee-pair-work")

    def add(self, key: bytes, index: int) -> Flight:
        flight = Flight(key, self, index)
        self.flights[index] = flight
        self.pairs.flights[key] = flight
        return flight

    def taken(self, flight: Flight, tokens: int) -> None:
        flight.tokens = tokens
        self._settle(flight)

    def close(self) -> None:
        """No more documents for this job."""
        if not self.closed:
            self.closed = True
            self.job.close()

    def cancel_if_unwatched(self, idle: bool = False) -> None:
        """Cancels the job once it has pairs to score and nobody waits on any of them (with
        `idle`, also when it has none: its documents may be queued unregistered)."""
        pending = [f for f in self.flights.values() if not f.result.done()]
        if self.cancelled or any(f.waiters > 0 for f in pending) or not (pending or idle):
            return
        self.cancelled = True
        self.close()
        self.job.cancel()
        self.fail(Cancelled("no request waits for these documents any more"))

    def fail(self, error: BaseException) -> None:
        """Every pair not yet scored fails with `error` (its waiters decide what to do)."""
        for flight in self.flights.values():
            if not flight.result.done():
                self._forget(flight)
                flight.result.set_exception(error)
                flight.result.exception()  # retrieved: a failure nobody waits for is no error

    def refused(self, flights: Sequence[Flight], error: BaseException) -> None:
        """The job refused these documents (add_documents raised): they fail, and the job is
        cancelled unless others wait on pairs it took before."""
        for flight in flights:
            if not flight.result.done():
                self._forget(flight)
                flight.result.set_exception(error)
                flight.result.exception()
        self.cancel_if_unwatched(idle=True)

    def _forget(self, flight: Flight) -> None:
        if self.pairs.flights.get(flight.key) is flight:
            del self.pairs.flights[flight.key]

    def _settle(self, flight: Flight) -> None:
        score, tokens = flight.score, flight.tokens
        if score is None or tokens is None or flight.result.done():
            return
        value = StoredScore(score.logit, score.score, tokens, score.truncated)
        self._forget(flight)
        self.pairs.cache.put(flight.key, value)
        flight.result.set_result(value)

    async def _read(self) -> None:
        try:
            async for score in self.job.results():
                flight = self.flights.get(score.index)
                if flight is not None:
                    flight.score = score
                    self._settle(flight)
        except asyncio.CancelledError:
            self.fail(Cancelled("the server is stopping"))
            raise
        except BaseException as exc:
            self.fail(exc)
            return
        # The job ended: whatever it did not score (cancelled, dropped) fails.
        self.fail(Cancelled("the job ended before these documents were scored"))


class PairScores:
    """The service's cache and the pairs in flight, shared by every request."""

    def __init__(self, cache: ScoreCache):
        self.cache = cache
        self.flights: dict[bytes, Flight] = {}
        self.coalesced = 0
        self.deduplicated = 0

    def stats(self) -> ScoreCacheStats:
        cache = self.cache
        return ScoreCacheStats(entries=len(cache), bytes=cache.bytes, capacity_bytes=cache.capacity_bytes,
                               hits=cache.hits, misses=cache.misses, evictions=cache.evictions,
                               coalesced=self.coalesced, deduplicated=self.deduplicated)


@dataclass(eq=False)
class _Pair:
    """One distinct document (by key) of a request, and the indices that hold it."""

    key: bytes
    document: Document
    indices: list[tuple[int, str]]  # (index, id) of each document holding it, first one first
    source: Source = Source.COMPUTED
    value: StoredScore | None = None
    flight: Flight | None = None
    delivered: int = 0  # how many of `indices` have their result


@dataclass(frozen=True)
class JobOptions:
    """What the request's engine jobs are opened with."""

    instruction: str
    truncation: Truncation
    max_tokens_per_document: int
    deadline: float | None


class PairRequest:
    """One request's documents, answered from the cache, by duplicates, by others' work, or by its
    own engine jobs: the face the service reads scores from (like a JobHandle)."""

    def __init__(self, pairs: PairScores, engine: EngineClient, query: Query, keys: PairKeys, options: JobOptions):
        self._pairs = pairs
        self._engine = engine
        self._query = query
        self._keys = keys
        self._options = options
        self._by_key: dict[bytes, _Pair] = {}
        self._works: list[EngineWork] = []
        self._events: asyncio.Queue[Score | BaseException | None] = asyncio.Queue()
        self._outstanding = 0  # documents added and not yet answered
        self._closed = False
        self._left = False
        self._retries: set[asyncio.Task[None]] = set()
        self._extra = RequestStats()  # what no job of this request counted

    # ---- the service's face -------------------------------------------------------------
    async def add_documents(self, documents: Sequence[IndexedDocument]) -> None:
        """Answers what it can at once (cache hits, repeats of answered documents); joins pairs in
        flight; sends the rest to this request's job (raising what the engine raises)."""
        misses: list[_Pair] = []
        for index, document in documents:
            self._outstanding += 1
            key = self._keys.of(document)
            pair = self._by_key.get(key)
            if pair is not None:  # a repeat within the request: answered with the first
                pair.indices.append((index, document.id))
                self._deliver(pair)
                continue
            pair = _Pair(key, document, [(index, document.id)])
            self._by_key[key] = pair
            if not self._lookup(pair):
                misses.append(pair)
        if misses:
            await self._compute(misses)

    def close(self) -> None:
        self._closed = True
        if self._works:
            self._works[0].close()
        self._events.put_nowait(None)

    def fail(self, error: BaseException) -> None:
        self._events.put_nowait(error)

    def leave(self) -> None:
        """The request leaves (done, failed or cancelled): it stops waiting on every pair, and a
        job of it is cancelled once nobody waits on a pair it has still to score; idempotent."""
        if self._left:
            return
        self._left = True
        for task in self._retries:
            task.cancel()
        for pair in self._by_key.values():
            if pair.flight is not None and not pair.flight.result.done():
                pair.flight.release()
        unanswered = not self._closed or self._outstanding > 0  # left early: what its jobs hold is dropped
        for work in self._works:
            work.close()
            work.cancel_if_unwatched(idle=unanswered)

    async def results(self) -> AsyncIterator[Score]:
        """Each document's score as it is answered, until the request is closed and every
        document is answered."""
        deadline = self._options.deadline
        while True:
            if self._closed and self._outstanding == 0 and self._events.empty():
                return
            if deadline is None:
                item = await self._events.get()
            else:
                try:
                    item = await asyncio.wait_for(
                        self._events.get(), max(0.0, deadline - time.monotonic()) + DEADLINE_GRACE_SECONDS)
                except TimeoutError:
                    raise DeadlineExpired("deadline expired before the documents were scored") from None
            if item is None:
                continue
            if isinstance(item, BaseException):
                raise item
            yield item

    @property
    def stats(self) -> RequestStats:
        """Usage and timings of the request: its jobs' (the first job's timings), plus the prompt
        tokens and images of every document no job of this request computed."""
        out = RequestStats()
        usage, extra = out.usage, self._extra.usage
        query_images = sum(isinstance(p, ImagePart) for p in self._query.parts)
        for k, work in enumerate(self._works):
            stats = work.job.stats
            for name in ("prompt_tokens", "computed_tokens", "images", "cached_images"):
                setattr(usage, name, getattr(usage, name) + getattr(stats.usage, name))
            if k > 0:  # a retry's job counted the query's images again
                usage.images -= query_images
            out.timings.preprocess_ms += stats.timings.preprocess_ms
            out.timings.queue_ms = max(out.timings.queue_ms, stats.timings.queue_ms)
            out.timings.inference_ms += stats.timings.inference_ms
            out.batches += stats.batches
        if not self._works:
            usage.images += query_images
        usage.prompt_tokens += extra.prompt_tokens
        usage.images += extra.images
        usage.cached_documents = extra.cached_documents
        usage.deduplicated_documents = extra.deduplicated_documents
        return out

    # ---- answering ----------------------------------------------------------------------
    def _lookup(self, pair: _Pair) -> bool:
        """Answers `pair` from the cache or joins its flight; False when it must be computed."""
        stored = self._pairs.cache.get(pair.key)
        if stored is not None:
            pair.source, pair.value = Source.CACHED, stored
            self._deliver(pair)
            return True
        flight = self._pairs.flights.get(pair.key)
        if flight is not None and not flight.work.cancelled:
            flight.waiters += 1
            pair.source, pair.flight = Source.JOINED, flight
            flight.result.add_done_callback(lambda result: self._landed(pair, result))
            return True
        return False

    async def _compute(self, misses: list[_Pair], retry: bool = False) -> None:
        """Sends `misses` to this request's main job (opened on the first miss), or to a job of
        their own (a retry: the main job may be closed by then)."""
        main = self._works[0] if self._works else None
        in_main = not retry and not self._closed and (main is None or not (main.closed or main.cancelled))
        if in_main and main is not None:
            work = main
        else:
            job = await self._engine.open_job(self._query, self._options.instruction, self._options.truncation,
                                              self._options.max_tokens_per_document, self._options.deadline)
            work = EngineWork(self._pairs, job)
            self._works.append(work)
            if self._left:  # left while the job opened
                work.close()
                return
        flights: list[Flight] = []
        for pair in misses:
            pair.source = Source.COMPUTED
            pair.flight = work.add(pair.key, pair.indices[0][0])
            pair.flight.result.add_done_callback(lambda result, pair=pair: self._landed(pair, result))
            flights.append(pair.flight)
        try:
            tokens = await work.job.add_documents([(pair.indices[0][0], pair.document) for pair in misses])
        except BaseException as exc:
            work.refused(flights, exc)
            raise
        finally:
            if not in_main:
                work.close()
        for flight, count in zip(flights, tokens):
            work.taken(flight, count)

    def _landed(self, pair: _Pair, result: asyncio.Future[StoredScore]) -> None:
        """A flight the pair waited on ended."""
        if self._left:
            return
        if result.cancelled() or result.exception() is not None:
            error = result.exception() if not result.cancelled() else Cancelled("the pair's work was cancelled")
            if pair.source is Source.COMPUTED:
                self.fail(error or Cancelled("the pair's work was cancelled"))
                return
            # Another request's job failed: score the pair here, as this request.
            pair.flight = None
            task = asyncio.ensure_future(self._retry(pair))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return
        pair.value = result.result()
        self._deliver(pair)

    async def _retry(self, pair: _Pair) -> None:
        try:
            if not self._lookup(pair):
                await self._compute([pair], retry=True)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.fail(exc)

    def _deliver(self, pair: _Pair) -> None:
        """Results for the pair's indices that have none yet, once its value is known."""
        value = pair.value
        if value is None:
            return
        extra = self._extra.usage
        images = sum(isinstance(p, ImagePart) for p in pair.document.parts)
        for position in range(pair.delivered, len(pair.indices)):
            index, doc_id = pair.indices[position]
            cached = pair.source is Source.CACHED
            if cached:
                extra.cached_documents += 1
                if position > 0:
                    self._pairs.cache.hits += 1  # a repeat of a hit is a hit too
            elif position > 0 or pair.source is Source.JOINED:
                extra.deduplicated_documents += 1
                if position > 0:
                    self._pairs.deduplicated += 1
                else:
                    self._pairs.coalesced += 1
            if cached or position > 0 or pair.source is Source.JOINED:  # no job of this request counted it
                extra.prompt_tokens += value.prompt_tokens
                extra.images += images
            self._outstanding -= 1
            self._events.put_nowait(Score(index, doc_id, value.score, value.logit, value.truncated, cached=cached))
        pair.delivered = len(pair.indices)
