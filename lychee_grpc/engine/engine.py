"""The engine's face: one model on one device, behind the `EngineClient` protocol (api.py): open
a job for a query, add its documents, read their scores as they come.

Used by the service (directly, or inside each worker process of a pool); knows nothing of gRPC.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image

from .api import CacheInfo, EngineClient, EngineInfo, EngineLimits, IndexedDocument, Truncation, score_documents
from .config import EngineConfig
from .errors import DeadlineExpired, NotReady
from .faults import FaultHook, NoFaults
from .job import Job
from .lm.executor import Executor
from .model.loader import LoadedModel, load_model
from .prompt.prepare import Preprocessor
from .prompt.prepared import EncodedImage, Prefetch, PreparedDocument, PreparedQuery
from .scheduler import Scheduler, no_stop_iteration
from .stats import DeviceMemory, EngineStats, StatsObserver, StatsRecorder
from .types import Document, ImagePart, Query, TextPart
from .vision.cache import VisionCache

log = logging.getLogger(__name__)


class Engine(EngineClient):
    """One model on one device. `observer` hears what the engine does (batches, drops, cache
    hits), for a metrics exporter; `stats()` gives a snapshot of the same counters."""

    def __init__(
        self,
        config: EngineConfig,
        loaded: LoadedModel,
        observer: StatsObserver | None = None,
    ):
        self.config = config
        self.loaded = loaded
        self._faults: FaultHook = NoFaults()
        self._recorder = StatsRecorder(observer)
        cuda = loaded.device.type == "cuda"
        image_processor = loaded.processor.image_processor
        size = getattr(image_processor, "size", {}) or {}
        self.min_image_pixels = config.min_image_pixels or size.get("shortest_edge") or 4 * 28 * 28
        self.max_image_pixels = config.max_image_pixels or size.get("longest_edge") or 1280 * 28 * 28
        # Tower outputs by image content: the preprocessor skips decoding what it holds, the
        # executor reads and fills it.
        self.vision_cache = VisionCache(config.vision_cache_bytes or ((2 << 30) if cuda else (256 << 20)))
        self.preprocessor = Preprocessor(
            loaded.processor,
            image_token_id=loaded.model.config.image_token_id,
            merge_size=loaded.model.config.vision_config.spatial_merge_size,
            text_limits=config.text_limits,
            image_limits=config.image_limits,
            min_image_pixels=self.min_image_pixels,
            max_image_pixels=self.max_image_pixels,
            vision_cached=self.vision_cache.__contains__,
            image_device=str(loaded.device) if cuda and config.images_on_gpu else None,
            decode_threads=config.preprocess_threads,
            run_ids_bytes=config.token_cache_bytes,
        )
        self.executor = Executor(
            loaded.model,
            loaded.yes_id,
            loaded.no_id,
            self.vision_cache,
            fill_pixels=self.preprocessor.fill_pixels,
            observer=self._recorder,
            window_kernel=config.window_kernel,
            batch_invariant=config.batch_invariant,
            attention_kernel=config.lm_attention_kernel,
            cuda_graphs=config.cuda_graphs,
            share_windows=config.share_windows,
            tower_graph_cells=config.tower_graph_cells,
        )
        self.scheduler: Scheduler | None = None
        self._cpu = ThreadPoolExecutor(max_workers=config.preprocess_threads, thread_name_prefix="lychee-prep")
        self._ready = False

    @property
    def workers(self) -> int:
        return 1

    @property
    def ready(self) -> bool:
        return self._ready

    def inject_faults(self, hook: FaultHook) -> None:
        """The one fault-injection hook (faults.py), for tests: from now on the scheduler calls
        `hook` where faults can strike. A server never calls this."""
        self._faults = hook
        if self.scheduler is not None:
            self.scheduler.faults = hook

    def observe(self, observer: StatsObserver) -> None:
        """Sends what the engine does to `observer` too (a metrics exporter attached once loaded)."""
        self._recorder.observer = observer

    @classmethod
    def load(cls, config: EngineConfig) -> Engine:
        return cls(config, load_model(config))

    # ---- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        cuda = self.loaded.device.type == "cuda"
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        self.scheduler = Scheduler(
            self.executor,
            max_batch_tokens=self.config.max_batch_tokens or (16384 if cuda else 4096),
            max_batch_documents=self.config.max_batch_documents,
            max_batch_images=self.config.max_batch_images,
            max_wait_ms=self.config.max_wait_ms,
            max_queue_documents=self.config.max_queue_documents,
            recorder=self._recorder,
            max_queue_tokens=self.config.max_queue_tokens,
            faults=self._faults,
        )
        self.scheduler.start()
        if self.config.warmup:
            await self._warmup()
        if self.executor.graphs is not None:
            # Before serving: a capture must not meet other GPU work.
            kept = await self.scheduler.run_on_gpu(self.executor.capture_graphs)
            log.info("CUDA graphs of small batches: %d kept; of the vision tower: %s", kept,
                     ", ".join(f"{len(grids)} image(s) of {sorted(set(grids))}"
                               for grids in self.executor.tower.captured_calls) or "none")
        self._ready = True

    async def _warmup(self) -> None:
        buf = io.BytesIO()
        Image.new("RGB", (56, 56), (200, 120, 40)).save(buf, "PNG")
        started = time.perf_counter()
        query = Query((TextPart("warm-up"),))
        await score_documents(
            self,
            query,
            [Document("t", (TextPart("text document"),)), Document("i", (ImagePart(buf.getvalue()), TextPart("x")))],
        )
        # One document alone, then one more for the same request in a later batch, reading the
        # prefix the first computed: a request's extra batch took ~2.2 s the first time it
        # happened on an H200 (the compiled kernels met new shapes); now it happens here.
        job = await self.open_job(query)
        try:
            await job.add_documents([(0, Document("a", (TextPart("one text document"),)))])
            results = job.results()
            await anext(results)
            await job.add_documents([(1, Document("b", (TextPart("a later document"),)))])
            job.close()
            async for _ in results:
                pass
        except BaseException:
            job.cancel()
            raise
        log.info("warm-up batch ran in %.0f ms", (time.perf_counter() - started) * 1e3)

    async def stop(self) -> None:
        self._ready = False
        if self.scheduler is not None:
            await self.scheduler.stop()
        self._cpu.shutdown(wait=False, cancel_futures=True)

    def on_failure(self, callback: Callable[[str], None]) -> None:
        """`callback(reason)` when the engine can no longer score (its scheduler's worker died)."""
        if self.scheduler is None:
            raise NotReady("start() the engine first")
        self.scheduler.on_death(lambda exc: callback(f"the engine died: {exc!r}"))

    def _prefetch(self, job: Job) -> Prefetch | None:
        """Image embeddings computed on the GPU thread ahead of the job's batches (see Prefetch)."""
        scheduler = self.scheduler
        if scheduler is None or self.config.prefetch_image_tokens <= 0:
            return None

        wait_s = self.config.prefetch_handoff_wait_ms / 1e3

        def start(pending: list[EncodedImage]) -> None:
            launched = scheduler.submit_to_gpu(self.embed_ahead, pending, job)
            if wait_s > 0:
                futures.wait([launched], timeout=wait_s)

        return Prefetch(start=start, budget=self.config.prefetch_image_tokens)

    def embed_ahead(self, pending: list[EncodedImage], job: Job) -> None:
        """On the GPU thread: the vision tower for images of `job` decoded ahead of its batch
        (public so that probes can time this step)."""
        if not job.alive():  # cancelled or expired while its images decoded
            return
        try:
            self.preprocessor.fill_pixels(pending)
            self.executor.embed_ahead(pending)
        except Exception as exc:  # the batch computes whatever is missing, and reports its errors
            if isinstance(exc, torch.OutOfMemoryError):
                torch.cuda.empty_cache()
            log.warning("computing %d image embeddings ahead of their batch failed: %s", len(pending), exc)

    # ---- requests -----------------------------------------------------------------------
    async def open_job(
        self,
        query: Query,
        instruction: str = "",
        truncation: Truncation = Truncation.NONE,
        max_tokens_per_document: int = 0,
        deadline: float | None = None,
    ) -> Job:
        """The job at once: its query is prepared (and refused, if it must be) with its first
        documents, in the same hop to the preparation threads (one hop fewer per request)."""
        if self.scheduler is None:
            raise NotReady("the model is still loading")
        return Job(request=(query, instruction or self.config.default_instruction), deadline=deadline,
                   intake=self._add_documents, truncation=truncation,
                   max_tokens_per_document=max_tokens_per_document or self.config.text_limits.max_tokens_per_document)

    async def _add_documents(self, job: Job, documents: Sequence[IndexedDocument]) -> list[int]:
        """Validates, prepares and queues `job`'s documents (Job.add_documents)."""
        scheduler = self.scheduler
        if scheduler is None:
            raise NotReady("the model is still loading")
        started = time.perf_counter()
        with scheduler.expecting_documents():
            # One call per request (images are decoded on the preprocessor's own threads);
            # splitting a request to overlap it with the GPU measured no gain (bench/RESULTS.md,
            # "Where the time goes now, and what is next").
            prepared = await self._prepare(job, documents)
        job.prepared(prepared, (time.perf_counter() - started) * 1e3)
        if job.expired():
            scheduler.drop_unqueued(job, len(prepared))
            raise DeadlineExpired("deadline expired before the documents were queued")
        scheduler.submit(job, prepared)
        return [doc.prompt_tokens for doc in prepared]

    async def _prepare(self, job: Job, documents: Sequence[IndexedDocument]) -> list[PreparedDocument]:
        loop = asyncio.get_running_loop()
        if not job.query_prepared and job.query_ready is None:  # the first documents: the query too
            ready = job.query_ready = loop.create_future()
            try:
                query, prepared = await loop.run_in_executor(
                    self._cpu, no_stop_iteration, self._prepare_first, job, documents)
            except Exception as exc:  # the query was refused: so is every call beside this one
                ready.set_exception(exc)
                ready.exception()  # retrieved: a call beside this one may not exist
                raise
            except BaseException:  # cancelled: the next call prepares the query
                job.query_ready = None
                ready.cancel()
                raise
            job.query_is(query)
            ready.set_result(None)
            if isinstance(prepared, BaseException):
                raise prepared
            return prepared
        if not job.query_prepared:
            assert job.query_ready is not None
            await job.query_ready
        return await loop.run_in_executor(
            self._cpu, no_stop_iteration, self.preprocessor.prepare_documents, job.query, documents,
            self._prefetch(job), job.truncation, job.max_tokens_per_document,
        )

    def _prepare_first(self, job: Job, documents: Sequence[IndexedDocument]
                       ) -> tuple[PreparedQuery, list[PreparedDocument] | Exception]:
        """On a preparation thread: the query (raising what refuses it), then the documents
        (what refuses them is returned: the prepared query stands either way)."""
        # The documents' images decode on their threads while the query is prepared here (a pair's
        # photo decoded after its query's ~1 ms of preparation before); a refused query leaves
        # them to finish unread.
        early = self.preprocessor.start_decoding(job.request[0], documents)
        query = self.preprocessor.prepare_query(*job.request)
        try:
            return query, self.preprocessor.prepare_documents(
                query, documents, self._prefetch(job), job.truncation, job.max_tokens_per_document, early)
        except Exception as exc:
            return query, exc

    # ---- introspection ------------------------------------------------------------------
    def info(self) -> EngineInfo:
        config = self.config
        counters = self._recorder.counters()
        runs = self.preprocessor.run_ids
        device = self.loaded.device
        return EngineInfo(
            model=config.model,
            dtype=str(self.loaded.dtype).removeprefix("torch."),
            attention=self.loaded.attention,
            random_weights=self.loaded.random_weights,
            parameters=self.loaded.parameters,
            default_instruction=config.default_instruction,
            limits=EngineLimits(
                max_documents_per_request=config.max_documents_per_request,
                max_tokens_per_document=config.text_limits.max_tokens_per_document,
                max_query_tokens=config.text_limits.max_query_tokens,
                max_instruction_tokens=config.text_limits.max_instruction_tokens,
                max_image_bytes=config.image_limits.max_bytes,
                max_image_pixels=config.image_limits.max_pixels,
                min_image_model_pixels=self.min_image_pixels,
                max_image_model_pixels=self.max_image_pixels,
                max_queue_documents=config.max_queue_documents,
            ),
            image_cache=CacheInfo(self.vision_cache.bytes, self.vision_cache.capacity_bytes,
                                  counters.image_cache_hits, counters.image_cache_misses),
            devices=(str(device) if device.type != "cuda" else f"{device}:{torch.cuda.get_device_name(device)}",),
            batch_invariant=config.batch_invariant,
            weights=self.loaded.weights,
            token_cache=CacheInfo(runs.bytes, runs.capacity_bytes, runs.hits, runs.misses),
        )

    def stats(self) -> list[EngineStats]:
        """The engine's counters and gauges now; cheap enough to call at every metrics scrape."""
        counters = self._recorder.counters()
        scheduler = self.scheduler
        cache = self.vision_cache
        runs = self.preprocessor.run_ids
        device = self.loaded.device
        if device.type == "cuda":
            memory = DeviceMemory(str(device), torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device))
        else:
            memory = DeviceMemory(str(device), 0, 0)
        return [EngineStats(
            **counters.by_name(),
            device=str(device),
            queue_documents=scheduler.queued if scheduler is not None else 0,
            queue_tokens=scheduler.queued_tokens if scheduler is not None else 0,
            preparing_requests=scheduler.preparing if scheduler is not None else 0,
            image_cache_bytes=cache.bytes,
            image_cache_capacity_bytes=cache.capacity_bytes,
            gpu_memory=(memory,),
            token_cache_hits=runs.hits,
            token_cache_misses=runs.misses,
            token_cache_bytes=runs.bytes,
            token_cache_capacity_bytes=runs.capacity_bytes,
        )]
