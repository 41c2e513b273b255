"""Where the host time of a batch's launch goes (the GPU thread's `Executor.launch`, and Explain's
plan on its own thread), for T100 and Explain (bench.profile.trace's pair), RANDOM weights of the
7B shape: each profiled with cProfile over a few requests after warm-up, top functions by own time.
cProfile slows Python calls, so read shares, not absolute times.

    python -m bench.profile.launch_calls --tiny .cache/tiny-model
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import time

from bench.harness.model import DEFAULT_TINY
from bench.harness.workloads import text_workload
from bench.profile.trace import explain_workload, run_once, started_engine


def profiled(fn, prof: cProfile.Profile, spent: list[float]):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        prof.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            prof.disable()
            spent.append((time.perf_counter() - t) * 1e3)
    return wrapper


def show(title: str, prof: cProfile.Profile, spent: list[float], top: int) -> None:
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    print(f"\n== {title}: {len(spent)} calls, wall under cProfile {', '.join(f'{t:.1f}' for t in spent)} ms")
    print("\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip()))


async def main_async() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", default=DEFAULT_TINY)
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--top", type=int, default=28)
    a = ap.parse_args()
    engine, loaded = await started_engine(a.tiny)
    ex = engine.executor
    tok = loaded.processor.tokenizer
    from lychee_grpc.service import explain

    for name, (query, docs) in (("T100", text_workload(tok, 1)), ("Explain", explain_workload(tok))):
        for _ in range(3):
            ex.vision_cache.clear()
            await run_once(engine, query, docs)
        launch, plan = cProfile.Profile(), cProfile.Profile()
        spent_launch: list[float] = []
        spent_plan: list[float] = []
        original_launch, original_plan = ex.launch, explain.plan
        ex.launch = profiled(original_launch, launch, spent_launch)  # type: ignore[method-assign]
        explain.plan = profiled(original_plan, plan, spent_plan)
        for _ in range(a.requests):
            ex.vision_cache.clear()
            await run_once(engine, query, docs)
        ex.launch, explain.plan = original_launch, original_plan  # type: ignore[method-assign]
        show(f"{name}: Executor.launch", launch, spent_launch, a.top)
        if spent_plan:
            show(f"{name}: explain.plan", plan, spent_plan, 16)
    await engine.stop()


if __name__ == "__main__":
    asyncio.run(main_async())
