"""What the GPU thread and the request thread do, and when the GPU gets to it, during one
100-candidate rerank or one Explain (`--only Explain`), RANDOM weights of the 7B shape, without the
profiler's overhead: the engine's steps are wrapped with CPU timestamps and CUDA events. "gpu from /
to" is when the GPU reached the step's first and last work; where it is later than the CPU's, the
GPU was busy before it.

    python -m bench.profile.trace
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time

import torch

from bench.harness.model import DEFAULT_TINY, build_model
from bench.harness.timing import collector_as_served, forget_text
from bench.harness.workloads import as_received, image_workload, text_workload
from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.model.loader import LoadedModel


class Tracer:
    def __init__(self):
        self.spans: list[dict] = []
        self.t0_cpu = 0.0
        self.t0_gpu: torch.cuda.Event | None = None
        self.on = False

    def start(self) -> None:
        torch.cuda.synchronize()
        self.spans = []
        self.t0_gpu = torch.cuda.Event(enable_timing=True)
        self.t0_gpu.record()
        self.t0_cpu = time.perf_counter()
        self.on = True

    def wrap(self, name: str, fn, gpu: bool):
        def wrapper(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            span = {"name": name, "thread": threading.current_thread().name, "enter": time.perf_counter()}
            if gpu:
                span["ev0"] = torch.cuda.Event(enable_timing=True)
                span["ev0"].record()
            try:
                return fn(*args, **kwargs)
            finally:
                span["exit"] = time.perf_counter()
                if gpu:
                    span["ev1"] = torch.cuda.Event(enable_timing=True)
                    span["ev1"].record()
                self.spans.append(span)
        return wrapper

    def report(self, title: str, wall_ms: float) -> None:
        torch.cuda.synchronize()
        self.on = False
        rows = []
        for s in sorted(self.spans, key=lambda s: s["enter"]):
            row = {"name": s["name"], "thread": s["thread"], "enter": (s["enter"] - self.t0_cpu) * 1e3,
                   "exit": (s["exit"] - self.t0_cpu) * 1e3}
            if "ev0" in s:
                row["g0"] = self.t0_gpu.elapsed_time(s["ev0"])
                row["g1"] = self.t0_gpu.elapsed_time(s["ev1"])
            rows.append(row)
        print(f"\n{title}: wall {wall_ms:.1f} ms")
        print(f"  {'step':22s} {'thread':14s} {'cpu from':>8s} {'to':>7s} {'gpu from':>8s} {'to':>7s} "
              f"{'gpu waited':>10s}")
        top_end = None
        idle = 0.0
        encodes = [r for r in rows if r["name"] == "encode_image"]
        rows = [r for r in rows if r["name"] != "encode_image"]
        if encodes:
            # One line for the images' encodes (up to 100 a request).
            took = sorted(r["exit"] - r["enter"] for r in encodes)
            # The decode threads, or the preparing thread for images it looks up itself.
            where = "+".join(sorted({r["thread"].split("_")[0] for r in encodes}))
            print(f"  {'encode_image x' + str(len(encodes)):22s} {where[:14]:14s} "
                  f"{min(r['enter'] for r in encodes):8.1f} {max(r['exit'] for r in encodes):7.1f} "
                  f"  each p50 {took[len(took) // 2]:.2f} ms, max {took[-1]:.2f} ms, "
                  f"{len({r['thread'] for r in encodes})} threads")
        for r in rows:
            g = f"{r['g0']:8.1f} {r['g1']:7.1f}" if "g0" in r else f"{'':8s} {'':7s}"
            waited = ""
            if "g0" in r and r["name"] in ("embed_ahead", "batch launch"):
                if top_end is not None and r["g0"] > top_end:
                    idle += r["g0"] - top_end
                    waited = f"{r['g0'] - top_end:10.1f}"
                top_end = max(top_end or 0.0, r["g1"])
            print(f"  {r['name']:22s} {r['thread'][:14]:14s} {r['enter']:8.1f} {r['exit']:7.1f} {g} {waited}")
        firsts = [r["g0"] for r in rows if "g0" in r]
        if firsts:
            print(f"  GPU idle between steps {idle:.1f} ms; first GPU step at {min(firsts):.1f} ms; "
                  f"last GPU work ends at {top_end:.1f} ms")


def install(engine: Engine, tracer: Tracer) -> None:
    ex, pre, sched = engine.executor, engine.preprocessor, engine.scheduler
    engine.embed_ahead = tracer.wrap("embed_ahead", engine.embed_ahead, gpu=True)
    sched._launch_batch = tracer.wrap("batch launch", sched._launch_batch, gpu=True)
    # The hop from the prepared documents to the GPU thread: queued on the event loop, then a batch formed.
    sched.submit = tracer.wrap("queued", sched.submit, gpu=False)
    sched._fill = tracer.wrap("batch formed", sched._fill, gpu=False)
    fill = tracer.wrap("  fill_pixels", pre.fill_pixels, gpu=True)
    pre.fill_pixels = fill
    ex.fill_pixels = fill
    ex.launch = tracer.wrap("  executor.launch", ex.launch, gpu=True)
    tower = ex.tower
    tower.__class__ = type("TracedTower", (tower.__class__,), {
        "__call__": tracer.wrap("  vision tower", tower.__class__.__call__, gpu=True)})
    proc = pre.image_processor
    for name in ("resize", "rescale_and_normalize", "patchify"):
        setattr(proc, name, tracer.wrap(f"    {name}", getattr(proc, name), gpu=True))
    pre.prepare_documents = tracer.wrap("prepare_documents", pre.prepare_documents, gpu=False)
    pre.encode_image = tracer.wrap("encode_image", pre.encode_image, gpu=False)
    pre.prepare_query = tracer.wrap("prepare_query", pre.prepare_query, gpu=False)
    from lychee_grpc.service import explain

    explain.plan = tracer.wrap("explain plan", explain.plan, gpu=False)


class CallProfile:
    """Where a thread's time goes in C calls (torch ops, GIL-releasing waits) while `on`: per
    callable, how many calls, their total and their longest wall time (sys.setprofile, per thread)."""

    def __init__(self):
        self.on = False
        self.stats: dict[tuple[str, str], list[float]] = {}
        self.lock = threading.Lock()

    def wrap(self, fn, first_only: bool):
        done = set()

        def wrapper(*args, **kwargs):
            key = threading.current_thread().name.split("_")[0]
            if not self.on or (first_only and key in done):
                return fn(*args, **kwargs)
            done.add(key)
            stack: list[float] = []

            def hook(frame, event, arg):
                if event == "c_call":
                    stack.append(time.perf_counter())
                elif event in ("c_return", "c_exception") and stack:
                    ms = (time.perf_counter() - stack.pop()) * 1e3
                    name = getattr(arg, "__qualname__", None) or getattr(arg, "__name__", str(arg))
                    with self.lock:
                        entry = self.stats.setdefault((key, name), [0, 0.0, 0.0])
                        entry[0] += 1
                        entry[1] += ms
                        entry[2] = max(entry[2], ms)

            sys.setprofile(hook)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sys.setprofile(None)
                with self.lock:
                    entry = self.stats.setdefault((key, f"<whole {getattr(fn, '__name__', fn)}>"), [0, 0.0, 0.0])
                    entry[0] += 1
                    entry[1] += (time.perf_counter() - t) * 1e3

        return wrapper

    def report(self, top: int = 14) -> None:
        rows = sorted(self.stats.items(), key=lambda kv: -kv[1][1])[:top]
        print(f"  {'thread':14s} {'call':44s} {'calls':>6s} {'total ms':>9s} {'max ms':>7s}")
        for (thread, name), (n, total, longest) in rows:
            print(f"  {thread[:14]:14s} {name[:44]:44s} {n:6d} {total:9.2f} {longest:7.2f}")
        self.stats = {}


async def started_engine(tiny: str = DEFAULT_TINY, preprocess_threads: int = 8) -> tuple[Engine, LoadedModel]:
    """An engine over the 7B shape with RANDOM weights, warmed up and started, and its model."""
    loaded = build_model(tiny)
    print("RANDOM weights, Qwen2.5-VL-7B shape; GPU:", torch.cuda.get_device_name())
    engine = Engine(EngineConfig(model="random-7b", warmup=True, preprocess_threads=preprocess_threads), loaded)
    await engine.start()
    return engine, loaded


async def run_once(engine: Engine, query, docs) -> None:
    """One request: a Rerank's documents, or (docs None) Explain of `query`'s pair as the service runs it;
    its documents' text new to the engine's token cache, as every request of these workloads before it."""
    forget_text(engine)
    if docs is None:
        from lychee_grpc.service.config import ServiceConfig
        from lychee_grpc.service.explain import explain
        from lychee_grpc.service.types import ExplainOptions

        pair_query, (document,) = as_received(query[0], [query[1]])
        await explain(engine, ServiceConfig(), pair_query, document, ExplainOptions(grid_size=4))
    else:
        await score_documents(engine, *as_received(query, docs))


def explain_workload(tok) -> tuple:
    """bench.pair's Explain: a 16-token query, a 448x448 JPEG and a 40-word title (grid 4: 56 fragments)."""
    import random

    from bench.harness.workloads import jpeg, words_of_tokens
    from bench.pair import TITLE_WORDS
    from lychee_grpc.engine.types import Document, ImagePart, Query, TextPart

    rng = random.Random(22)
    query = Query((TextPart(words_of_tokens(tok, rng, 16)),))
    words = " ".join(rng.choice(TITLE_WORDS) for _ in range(40))
    return (query, Document("e", (ImagePart(jpeg(random.Random(1000), 448)), TextPart(words)))), None


async def timed(engine: Engine, query, docs, cold: bool) -> float:
    if cold:
        engine.executor.vision_cache.clear()
    torch.cuda.synchronize()
    t = time.perf_counter()
    await run_once(engine, query, docs)
    return (time.perf_counter() - t) * 1e3


async def main_async() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--switch-ms", type=float, default=0.0, help="sys.setswitchinterval in ms (0: leave)")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    ap.add_argument("--preprocess-threads", type=int, default=8)
    ap.add_argument("--only", default="", help="comma-separated workloads (T100, I100 cold, I100 warm, Explain)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile the C calls of I100 cold's first prefetch chunk and of its image decodes")
    a = ap.parse_args()
    if a.switch_ms:
        sys.setswitchinterval(a.switch_ms / 1e3)
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    print(f"GIL switch interval {sys.getswitchinterval() * 1e3:.2f} ms, torch threads {torch.get_num_threads()}, "
          f"preprocess threads {a.preprocess_threads}")
    engine, loaded = await started_engine(preprocess_threads=a.preprocess_threads)
    tok = loaded.processor.tokenizer
    tracer = Tracer()
    install(engine, tracer)
    calls = CallProfile()
    if a.profile:
        engine.embed_ahead = calls.wrap(engine.embed_ahead, first_only=True)
        engine.preprocessor.encode_image = calls.wrap(engine.preprocessor.encode_image, first_only=False)
    with collector_as_served():  # as the server runs it
        for name, (query, docs), cold in (("T100", text_workload(tok, 1), False),
                                          ("I100 cold", image_workload(tok, 7), True),
                                          ("I100 warm", image_workload(tok, 7), False),
                                          ("Explain", explain_workload(tok), True)):
            if a.only and name not in a.only.split(","):
                continue
            times = [await timed(engine, query, docs, cold) for _ in range(6)]
            print(f"\n{name}: p50 {statistics.median(times):.1f} ms of 6 untraced requests")
            for _ in range(2):
                if cold:
                    engine.executor.vision_cache.clear()
                tracer.start()
                t = time.perf_counter()
                await run_once(engine, query, docs)
                tracer.report(name, (time.perf_counter() - t) * 1e3)
            if a.profile and cold:
                engine.executor.vision_cache.clear()
                calls.on = True
                t = time.perf_counter()
                await score_documents(engine, query, docs)
                calls.on = False
                print(f"\n{name}, C calls of the first prefetch chunk (GPU thread) and of all image decodes "
                      f"(decode threads), under sys.setprofile: wall {(time.perf_counter() - t) * 1e3:.1f} ms")
                calls.report()
    await engine.stop()


if __name__ == "__main__":
    asyncio.run(main_async())
