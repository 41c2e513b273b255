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

Everything here runs on the event loop's thread. A pair's waiters are plain callbacks, called
when its score lands (no future or task per pair): this path runs for every document of every
request, and its first version cost ~270 us more per 12-document request than the path without a
cache (bench/RESULTS.md, "The per-call cost").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from enum import Enum
from functools import partial

from ..engine.api import EngineClient, IndexedDocument, JobHandle, Truncation, each_score
from ..engine.types import Document, ImagePart, Query, RequestStats, Score
from ..engine.util.inbox import Inbox
from .errors import Cancelled, DeadlineExpired
from .score_cache import PairKeys, ScoreCache, ScoreCacheStats, StoredScore

# How long past its deadline a request waits for a pair before it gives up (its own engine job
# fails with DeadlineExpired by itself; this bounds waiting on another request's work).
DEADLINE_GRACE_SECONDS = 0.25
# An engine may report a job's usage only with the job's end, after its last score (the worker
# pool does): a request that has every score waits this long at most for its jobs' ends, so that
# its usage counts them.
JOB_END_WAIT_SECONDS = 1.0


class Source(Enum):
    CACHED = "cached"  # in the cache when looked up
    JOINED = "joined"  # queued or running for another request
    COMPUTED = "computed"  # by this request's job


# Called once when a pair's flight ends: with its score, or with the error that ended it.
Landing = Callable[[StoredScore | None, BaseException | None], None]


class Flight:
    """One pair queued or running in a job, the request that computes it, and everyone else
    waiting for its result."""

    __slots__ = ("done", "index", "joined", "key", "owner", "pair", "score", "tokens", "waiters", "work")

    def __init__(self, key: bytes, work: EngineWork, index: int, owner: PairRequest, pair: _Pair):
        self.key = key
        self.work: EngineWork | None = work  # until it lands (the work's flights refer back to it)
        self.index = index  # the document's index in the job (its request's index)
        # The request whose job computes it, and its document (no callback object per pair: this
        # path runs for every document).
        self.owner: PairRequest | None = owner
        self.pair: _Pair | None = pair
        self.joined: list[Landing] | None = None  # other requests' waits, when there are any
        self.waiters = 1
        self.tokens: int | None = None  # prompt tokens, once the job has taken the document
        self.score: Score | None = None  # once scored
        self.done = False

    def join(self, landing: Landing) -> None:
        self.waiters += 1
        if self.joined is None:
            self.joined = []
        self.joined.append(landing)

    def release(self) -> None:
        """One waiter stops waiting."""
        self.waiters -= 1
        if self.waiters <= 0 and self.work is not None:
            self.work.cancel_if_unwatched()

    def land(self, value: StoredScore | None, error: BaseException | None) -> None:
        self.done = True
        owner, pair, joined = self.owner, self.pair, self.joined
        # No reference cycle outlives the flight (work -> flight -> work, request -> pair -> flight
        # -> request): the request's objects are then freed as it ends, not by the collector.
        self.owner = self.pair = self.joined = self.work = None
        if owner is not None and pair is not None:
            owner.landed(pair, value, error)
        for landing in joined or ():
            landing(value, error)


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

    def add(self, key: bytes, index: int, owner: PairRequest, pair: _Pair) -> Flight:
        flight = Flight(key, self, index, owner, pair)
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
        pending = [f for f in self.flights.values() if not f.done]
        if self.cancelled or any(f.waiters > 0 for f in pending) or not (pending or idle):
            return
        self.cancelled = True
        self.close()
        self.job.cancel()
        self.fail(Cancelled("no request waits for these documents any more"))

    def fail(self, error: BaseException, flights: Sequence[Flight] | None = None) -> None:
        """The pairs not yet scored (of `flights`, or all) fail with `error` (their waiters
        decide what to do)."""
        for flight in list(self.flights.values()) if flights is None else flights:
            if not flight.done:
                self._forget(flight)
                flight.land(None, error)

    def refused(self, flights: Sequence[Flight], error: BaseException) -> None:
        """The job refused these documents (add_documents raised): they fail, and the job is
        cancelled unless others wait on pairs it took before."""
        self.fail(error, flights)
        self.cancel_if_unwatched(idle=True)

    def _forget(self, flight: Flight) -> None:
        if self.pairs.flights.get(flight.key) is flight:
            del self.pairs.flights[flight.key]

    def _settle(self, flight: Flight) -> None:
        score, tokens = flight.score, flight.tokens
        if score is None or tokens is None or flight.done:
            return
        value = StoredScore(score.logit, score.score, tokens, score.truncated)
        self._forget(flight)
        self.pairs.cache.put(flight.key, value)
        flight.land(value, None)

    async def _read(self) -> None:
        try:
            flights = self.flights
            async for scores in self.job.result_batches():
                for score in scores:
                    flight = flights.get(score.index)
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


class _Pair:
    """One distinct document (by key) of a request, and the indices that hold it."""

    __slots__ = ("delivered", "document", "flight", "indices", "key", "source", "value")

    def __init__(self, key: bytes, document: Document, index: int):
        self.key = key
        self.document = document
        self.indices: list[tuple[int, str]] = [(index, document.id)]  # each document holding it, first first
        self.source = Source.COMPUTED
        self.value: StoredScore | None = None
        self.flight: Flight | None = None
        self.delivered = 0  # how many of `indices` have their result


class JobOptions:
    """What the request's engine jobs are opened with."""

    __slots__ = ("deadline", "instruction", "max_tokens_per_document", "truncation")

    def __init__(self, instruction: str, truncation: Truncation, max_tokens_per_document: int,
                 deadline: float | None):
        self.instruction = instruction
        self.truncation = truncation
        self.max_tokens_per_document = max_tokens_per_document
        self.deadline = deadline


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
        # The request's events, in order: scores, an error, or None (a wake-up).
        self._events: Inbox[Score | BaseException | None] = Inbox()
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
        by_key, key_of = self._by_key, self._keys.of
        for index, document in documents:
            self._outstanding += 1
            key = key_of(document)
            pair = by_key.get(key)
            if pair is not None:  # a repeat within the request: answered with the first
                pair.indices.append((index, document.id))
                self._deliver(pair)
                continue
            pair = by_key[key] = _Pair(key, document, index)
            if not self._lookup(pair):
                misses.append(pair)
        if misses:
            await self._compute(misses)

    def close(self) -> None:
        self._closed = True
        if self._works:
            self._works[0].close()
        self._events.put(None)

    def fail(self, error: BaseException) -> None:
        self._events.put(error)

    def leave(self) -> None:
        """The request leaves (done, failed or cancelled): it stops waiting on every pair, and a
        job of it is cancelled once nobody waits on a pair it has still to score; idempotent."""
        if self._left:
            return
        self._left = True
        for task in self._retries:
            task.cancel()
        if self._outstanding:
            for pair in self._by_key.values():
                if pair.flight is not None and not pair.flight.done:
                    pair.flight.release()
        unanswered = not self._closed or self._outstanding > 0  # left early: what its jobs hold is dropped
        for work in self._works:
            work.close()
            work.cancel_if_unwatched(idle=unanswered)

    def results(self) -> AsyncIterator[Score]:
        """Each document's score as it is answered, until the request is closed and every
        document is answered."""
        return each_score(self.result_batches())

    async def result_batches(self) -> AsyncIterator[list[Score]]:
        """`results()` in lists of what was answered together."""
        deadline = self._options.deadline
        timer = None
        if deadline is not None:  # one timer for the request (a wait_for per score cost a task each)
            timer = asyncio.get_running_loop().call_later(
                max(0.0, deadline - time.monotonic()) + DEADLINE_GRACE_SECONDS, self._events.put,
                DeadlineExpired("deadline expired before the documents were scored"))
        events = self._events
        try:
            while True:
                if self._closed and self._outstanding == 0 and events.empty():
                    await self._jobs_ended()
                    return
                scores: list[Score] = []
                for item in await events.get_all():
                    if isinstance(item, BaseException):
                        if scores:  # what was answered before the error is still sent first
                            yield scores
                        raise item
                    if item is not None:
                        scores.append(item)
                if scores:
                    yield scores
        finally:
            if timer is not None:
                timer.cancel()

    async def _jobs_ended(self) -> None:
        """Until this request's jobs have ended (their usage counted), within JOB_END_WAIT_SECONDS
        and the request's deadline: every score is in, so only the usage could be short."""
        readers = [w.reader for w in self._works if w.closed and not w.cancelled and not w.reader.done()]
        if not readers:
            return
        timeout = JOB_END_WAIT_SECONDS
        if self._options.deadline is not None:
            timeout = min(timeout, self._options.deadline - time.monotonic())
        if timeout > 0:
            await asyncio.wait(readers, timeout=timeout)

    @property
    def stats(self) -> RequestStats:
        """Usage and timings of the request: its jobs' (the first job's timings), plus the prompt
        tokens and images of every document no job of this request computed."""
        out = RequestStats()
        usage, extra = out.usage, self._extra.usage
        query_images = sum(isinstance(p, ImagePart) for p in self._query.parts)
        for k, work in enumerate(self._works):
            stats = work.job.stats
            usage.prompt_tokens += stats.usage.prompt_tokens
            usage.computed_tokens += stats.usage.computed_tokens
            usage.images += stats.usage.images - (query_images if k else 0)  # a retry's job counted the query's
            usage.cached_images += stats.usage.cached_images
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
        if flight is not None and flight.work is not None and not flight.work.cancelled:
            pair.source, pair.flight = Source.JOINED, flight
            flight.join(partial(self.landed, pair))
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
            options = self._options
            job = await self._engine.open_job(self._query, options.instruction, options.truncation,
                                              options.max_tokens_per_document, options.deadline)
            work = EngineWork(self._pairs, job)
            self._works.append(work)
            if self._left:  # left while the job opened
                work.close()
                return
        flights: list[Flight] = []
        for pair in misses:
            pair.source = Source.COMPUTED
            flights.append(work.add(pair.key, pair.indices[0][0], self, pair))
            pair.flight = flights[-1]
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

    def landed(self, pair: _Pair, value: StoredScore | None, error: BaseException | None) -> None:
        """The flight the pair waited on ended."""
        if self._left:
            return
        if value is None:
            if pair.source is Source.COMPUTED:
                self.fail(error or Cancelled("the pair's work was cancelled"))
                return
            # Another request's job failed: score the pair here, as this request.
            pair.flight = None
            task = asyncio.ensure_future(self._retry(pair))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return
        pair.value = value
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
        """Results for the pair's indices that have none yet, once its value is known. The first
        index of a pair this request computed was counted by its job; every other one here."""
        value = pair.value
        if value is None:
            return
        indices, source = pair.indices, pair.source
        extra = self._extra.usage
        put = self._events.put
        for position in range(pair.delivered, len(indices)):
            index, doc_id = indices[position]
            cached = source is Source.CACHED
            if cached:
                extra.cached_documents += 1
                if position:
                    self._pairs.cache.hits += 1  # a repeat of a hit is a hit too
            elif position or source is Source.JOINED:
                extra.deduplicated_documents += 1
                if position:
                    self._pairs.deduplicated += 1
                else:
                    self._pairs.coalesced += 1
            if cached or position or source is Source.JOINED:  # no job of this request counted it
                extra.prompt_tokens += value.prompt_tokens
                extra.images += sum(isinstance(p, ImagePart) for p in pair.document.parts)
            self._outstanding -= 1
            computed = pair.flight.score if not position and source is Source.COMPUTED and pair.flight else None
            # The job's own Score for the index it computed (the same fields): one object less per document.
            put(computed or Score(index, doc_id, value.score, value.logit, value.truncated, cached))
        pair.delivered = len(indices)
