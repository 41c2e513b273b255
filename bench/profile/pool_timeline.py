"""Where one 100-document request's time goes behind the worker pool (RANDOM weights, 7B shape):
requests one at a time through `WorkerPool` (no gRPC), with the steps timed in the parent (send,
add acknowledged, first and last score back) and in each worker (query and document preparation,
the tower ahead of the batch, each LM pass), on one clock (CLOCK_MONOTONIC is shared by the
processes of a host). Prints each step's median start and end, ms from the request's start.

    python -m bench.profile.pool_timeline --devices cuda:0 --devices cuda:0,cuda:1
    python -m bench.profile.pool_timeline --smoke     # tiny model, two CPU workers: does it run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.workers.pool import PoolJob, WorkerPool, parse_devices

from ..harness.model import DEFAULT_TINY
from ..harness.workloads import image_workload, text_workload

TIMELINE_DIR = "LYCHEE_TIMELINE_DIR"


# ---- in each worker process -------------------------------------------------------------
def _recorder():
    path = Path(os.environ[TIMELINE_DIR], f"worker-{os.getpid()}.jsonl")
    handle = path.open("a", buffering=1)

    def record(step: str, start: float, end: float) -> None:
        handle.write(json.dumps([step, start, end]) + "\n")

    return record


def timed_engine(config, observer=None):
    """The benchmark's engine (RANDOM 7B weights, or the tiny checkpoint on CPU) with its steps
    timed into $LYCHEE_TIMELINE_DIR."""
    import torch

    if config.device.startswith("cuda"):
        from ..harness.engine_factory import random_7b_engine

        engine = random_7b_engine(config, observer)
    else:
        from lychee_grpc.engine.engine import Engine
        from lychee_grpc.engine.model.loader import load_model

        engine = Engine(config, load_model(config), observer=observer)
    record = _recorder()
    cuda = config.device.startswith("cuda")

    def wrap_async(owner, name: str, step: str) -> None:
        inner = getattr(owner, name)

        async def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return await inner(*args, **kwargs)
            finally:
                record(step, start, time.perf_counter())

        setattr(owner, name, timed)

    def wrap_sync(owner, name: str, step: str, sync: bool = False) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                if sync and cuda:
                    torch.cuda.synchronize()
                record(step, start, time.perf_counter())

        setattr(owner, name, timed)

    start = engine.start

    async def started() -> None:
        await start()
        wrap_async(engine.scheduler, "_launch", "w.launch")
        wrap_async(engine.scheduler, "_complete", "w.batch")
        record(f"threads torch={torch.get_num_threads()} cpus={os.cpu_count()}", 0.0, 0.0)

    engine.start = started
    # The worker's pipe writer (the observer forwards through it): when each score leaves.
    worker = getattr(getattr(observer, "_send", None), "__self__", None)
    if worker is not None:
        send = worker.send

        def timed_send(message) -> None:
            start = time.perf_counter()
            send(message)
            kind = type(message).__name__
            if kind in ("Scored", "JobDone", "Added", "Opened", "Snapshot"):
                record(f"w.send {kind}", start, time.perf_counter())

        worker.send = timed_send
    wrap_async(engine, "open_job", "w.open_job")
    wrap_async(engine, "_add_documents", "w.add_documents")
    wrap_sync(engine.preprocessor, "prepare_documents", "w.prepare_documents")
    synced = os.environ.get("LYCHEE_TIMELINE_SYNC") == "1"
    wrap_sync(engine.executor, "embed_ahead", "w.tower_ahead" + (" (synced)" if synced else " (launch)"), sync=synced)
    # The scheduler launches a pass and reads its scores later (batches overlap): synced here, the
    # step is the pass's GPU time, and the overlap is given up while probing.
    wrap_sync(engine.executor, "launch", "w.lm_pass", sync=True)
    return engine


# ---- in the parent ----------------------------------------------------------------------
async def one(pool: WorkerPool, query, docs, marks: dict[str, float]) -> None:
    marks["p.open"] = time.perf_counter()
    job: PoolJob = await pool.open_job(query)
    inner = job.on_scored

    def on_scored(share, score) -> None:
        now = time.perf_counter()
        marks.setdefault("p.first_score", now)
        marks["p.last_score"] = now
        marks.setdefault(f"p.first_score from worker {share.worker.index}", now)
        marks[f"p.last_score from worker {share.worker.index}"] = now
        inner(share, score)

    job.on_scored = on_scored  # type: ignore[method-assign]
    await job.add_documents(list(enumerate(docs)))
    marks["p.added"] = time.perf_counter()
    job.close()
    count = sum([1 async for _ in job.results()])
    marks["p.done"] = time.perf_counter()
    assert count == len(docs), (count, len(docs))


async def first_shapes(pool: WorkerPool, tok) -> str:
    """The first batch of one document, and the first batch reading a prefix stored by an earlier
    batch of its request, right after start: the warm-up should have met both (ms)."""
    query, docs = text_workload(tok, 4000, documents=2)
    started = time.perf_counter()
    job = await pool.open_job(query)
    await job.add_documents([(0, docs[0])])
    results = job.results()
    await anext(results)
    single = (time.perf_counter() - started) * 1e3
    started = time.perf_counter()
    await job.add_documents(list(enumerate(docs))[1:])
    job.close()
    async for _ in results:
        pass
    later = (time.perf_counter() - started) * 1e3
    return f"first one-document request {single:.0f} ms; its later one-document batch {later:.0f} ms"


async def measure(devices: str, a: argparse.Namespace, folder: Path) -> list[str]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.tiny)
    engine = EngineConfig(model=a.tiny if a.smoke else "random-qwen2.5-vl-7b (RANDOM weights)",
                          preprocess_threads=a.preprocess_threads, vision_cache_bytes=1 << 20,
                          warmup=not a.smoke, torch_threads=a.torch_threads or None)
    pool = WorkerPool(engine, parse_devices(devices), split_min_documents=16, engine_factory=timed_engine)
    for f in folder.glob("worker-*.jsonl"):
        f.unlink()
    started = time.perf_counter()
    await pool.start()
    out = [f"\n## {devices}: {len(pool.devices)} workers ready in {time.perf_counter() - started:.0f} s"]
    try:
        out.append(await first_shapes(pool, tok))
        for name, make in (("T100", text_workload), ("I100 cold", image_workload)):
            windows: list[dict[str, float]] = []
            for seed in range(a.requests + 1):
                query, docs = make(tok, 5000 + seed)
                marks: dict[str, float] = {}
                await one(pool, query, docs, marks)
                if seed:  # the first one warms this workload's shapes
                    windows.append(marks)
                await asyncio.sleep(0.05)
            out += summarize(name, windows, folder)
            if a.raw:
                out += raw(name, windows, folder)
    finally:
        await pool.stop()
    return out


def summarize(name: str, windows: list[dict[str, float]], folder: Path) -> list[str]:
    # step -> per request: (first start, last end, summed duration, count), ms from the request's start
    steps: dict[str, list[tuple[float, float, float, int]]] = defaultdict(list)
    threads = set()
    for index, path in enumerate(sorted(folder.glob("worker-*.jsonl"))):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        threads.update(step for step, _, _ in records if step.startswith("threads"))
        for marks in windows:
            t0 = marks["p.open"]
            spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
            for step, start, end in records:
                if not step.startswith("threads") and t0 <= start <= marks["p.done"]:
                    spans[step].append(((start - t0) * 1e3, (end - t0) * 1e3))
            for step, found in spans.items():
                steps[f"worker {index} {step}"].append((min(s for s, _ in found), max(e for _, e in found),
                                                        sum(e - s for s, e in found), len(found)))
    lines = [f"\n{name}: {len(windows)} requests; {', '.join(sorted(threads))}",
             "| step | n per request | median first start ms | median last end ms | median summed ms |",
             "|---|---|---|---|---|"]
    for key in sorted({k for m in windows for k in m if k != "p.open"}):
        at = statistics.median((m[key] - m["p.open"]) * 1e3 for m in windows)
        lines.append(f"| parent {key} | 1 | | {at:.1f} | |")
    for step, rows in sorted(steps.items(), key=lambda kv: statistics.median(r[0] for r in kv[1])):
        med = [statistics.median(r[k] for r in rows) for k in range(4)]
        lines.append(f"| {step} | {med[3]:g} | {med[0]:.1f} | {med[1]:.1f} | {med[2]:.1f} |")
    return lines


def raw(name: str, windows: list[dict[str, float]], folder: Path) -> list[str]:
    """Each request's events in order (send events of one kind merged into first-last)."""
    out = []
    files = sorted(folder.glob("worker-*.jsonl"))
    records = [(i, json.loads(line)) for i, f in enumerate(files) for line in f.read_text().splitlines()]
    for n, marks in enumerate(windows):
        t0 = marks["p.open"]
        events: dict[str, list[float]] = {}
        for i, (step, start, end) in records:
            if step.startswith("threads") or not t0 <= start <= marks["p.done"]:
                continue
            key = f"worker {i} {step}"
            if step.startswith("w.send"):
                span = events.setdefault(key, [start, end, 0])
                span[0], span[1] = min(span[0], start), max(span[1], end)
                span[2] += 1
            else:
                events[f"{key} #{sum(k.startswith(key) for k in events)}"] = [start, end, 1]
        for key, at in marks.items():
            events[f"parent {key}"] = [at, at, 1]
        out.append(f"\n{name} request {n}:")
        for key, (start, end, count) in sorted(events.items(), key=lambda kv: kv[1][0]):
            times = f"{(start - t0) * 1e3:7.1f} - {(end - t0) * 1e3:7.1f}"
            out.append(f"  {times}  {key}" + (f" x{count}" if count > 1 else ""))
    return out


async def main_async(a: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="pool-timeline-"))
    os.environ[TIMELINE_DIR] = str(folder)
    os.environ["LYCHEE_TIMELINE_SYNC"] = "1" if a.sync_tower else "0"
    if a.omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read when each spawned worker loads torch
    lines = []
    for devices in a.devices or (["cpu,cpu"] if a.smoke else ["cuda:0", "cuda:0,cuda:1"]):
        lines += await measure(devices, a, folder)
    kind = "tiny checkpoint on CPU" if a.smoke else "RANDOM weights, Qwen2.5-VL-7B shape"
    print(f"\npool timeline ({kind}); vision cache off, so I100 is cold; torch threads "
          f"{a.torch_threads or 'default'}, OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile.pool_timeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", action="append", help="a --devices value (repeatable)")
    p.add_argument("--requests", type=int, default=5, help="timed requests per workload (after one warm-up)")
    p.add_argument("--preprocess-threads", type=int, default=8)
    p.add_argument("--torch-threads", type=int, default=0)
    p.add_argument("--sync-tower", action="store_true",
                   help="wait for each tower chunk on the GPU (its true end; delays the next launch)")
    p.add_argument("--omp-passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE in the workers")
    p.add_argument("--raw", action="store_true", help="also each request's events in order")
    p.add_argument("--tiny", default=DEFAULT_TINY)
    p.add_argument("--smoke", action="store_true", help="the tiny checkpoint on two CPU workers")
    a = p.parse_args(argv)
    if a.smoke:
        a.requests = min(a.requests, 2)
    return asyncio.run(main_async(a))


if __name__ == "__main__":
    sys.exit(main())
