"""Timing: CUDA events for kernels, wall time around GPU-synchronised requests, percentiles."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from lychee_grpc import memory
from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.model.reference import reference_logits
from lychee_grpc.engine.prompt.template import DEFAULT_INSTRUCTION

from .workloads import Workload, as_received


@contextmanager
def collector_as_served() -> Iterator[None]:
    """Python's garbage collector as a server runs it while the block runs: what is loaded now
    (the model, the engines, the libraries) frozen out of its passes, with the serving thresholds
    (`memory.freeze_loaded_objects`). Unfrozen, a benchmark process's full collection took 270-350
    ms and a generation-1 pass ~10 ms inside single requests, which a server does not pay
    (bench/RESULTS.md)."""
    memory.freeze_loaded_objects()
    try:
        yield
    finally:
        memory.unfreeze()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], iters: int = 20, warmup: int = 3) -> float:
    """Mean milliseconds of one call of fn, timed by CUDA events after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def p50(values: Sequence[float]) -> float:
    return statistics.median(values)


def forget_images(engine) -> None:
    """Empties the engine's vision cache: the next request computes every image (a cold run)."""
    engine.executor.vision_cache.clear()


def forget_text(engine) -> None:
    """Empties the engine's token cache of documents' text (prompt/run_ids.py), where its tree has
    one: the next request tokenizes every document, as every request did before that cache (the
    benchmarks' workloads repeat their documents)."""
    runs = getattr(engine.preprocessor, "run_ids", None)
    if runs is not None:
        runs.clear()


async def time_engine(engine, workloads: Sequence[Workload], iterations: int, cold: bool, warmup: int = 1,
                      text_seen: bool = False):
    """Wall ms of `Engine.rerank` per request (GPU synchronised), and the rankings. Each request's
    documents' text is new to the engine's token cache unless `text_seen` (then the caller has
    scored `workloads` before)."""
    times, rankings = [], []
    for k in range(-warmup, iterations):
        query, docs = workloads[max(k, 0) % len(workloads)] if not cold else workloads[(k + warmup) % len(workloads)]
        if cold:
            forget_images(engine)
        if not text_seen:
            forget_text(engine)
        if k == 0 and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        sync()
        start = time.perf_counter()
        ranking = await score_documents(engine, *as_received(query, docs))
        sync()
        if k >= 0:
            times.append((time.perf_counter() - start) * 1e3)
            rankings.append(ranking)
    return times, rankings


def time_reference(loaded, workloads: Sequence[Workload], iterations: int) -> tuple[list[float], list[torch.Tensor]]:
    """The plain transformers way (left padding, batches of 16) on the same workloads."""
    times, logits = [], []
    for k in range(iterations):
        query, docs = workloads[k % len(workloads)]
        sync()
        start = time.perf_counter()
        z = reference_logits(loaded.model, loaded.processor, DEFAULT_INSTRUCTION, query.parts,
                             [d.parts for d in docs], batch_size=16)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
        logits.append(z)
    return times, logits


def compare(fast_ranking, ref_logits) -> dict:
    """Largest score difference, and pairs the reference orders by more than 2e-2 that `fast`
    (a ranking, or another set of reference logits) does not."""
    if hasattr(fast_ranking, "scores"):
        fast = {s.index: s.score for s in fast_ranking.scores}
    else:
        fast = dict(enumerate(1 / (1 + math.exp(-float(z))) for z in fast_ranking))
    ref = [1 / (1 + math.exp(-float(z))) for z in ref_logits]
    diff = max(abs(fast[i] - ref[i]) for i in range(len(ref)))
    flips = sum(1 for i in range(len(ref)) for j in range(len(ref))
                if ref[i] - ref[j] > 2e-2 and fast[i] <= fast[j])
    return {"max_abs_diff_vs_ref": round(diff, 5), "order_flips_over_2e-2": flips}
