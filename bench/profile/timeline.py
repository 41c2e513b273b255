"""Where the GPU waits during one 100-candidate rerank (RANDOM weights, 7B shape): a request
through `Engine.rerank` under the profiler; prints the wall time, the GPU's busy time, the time
before its first kernel and after its last, and the longest idle gaps with the CPU work running
in them.

    python -m bench.profile.timeline
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.harness.model import build_model
from bench.harness.workloads import image_workload, text_workload
from bench.profile.intervals import kernel_timeline
from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine


def report(name: str, prof, wall_ms: float, t0_us: float, gaps: int = 8) -> None:
    timeline = kernel_timeline((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                               if e.device_type == DeviceType.CUDA)
    busy, first, last = timeline.busy, timeline.first, timeline.last
    cpu = [e for e in prof.events() if e.device_type == DeviceType.CPU]
    idle = sorted(timeline.gaps, key=lambda gap: (gap.length, gap.start), reverse=True)
    print(f"{name}: wall {wall_ms:.1f} ms, GPU busy {busy / 1e3:.1f} ms, first kernel at "
          f"{(first - t0_us) / 1e3:.1f} ms, idle between kernels {(last - first - busy) / 1e3:.1f} ms")
    for gap in idle[:gaps]:
        inside = sorted((e for e in cpu if gap.start <= e.time_range.start < gap.end), key=lambda e: -e.cpu_time_total)
        names = ", ".join(dict.fromkeys(e.name for e in inside[:6]))
        print(f"  gap {gap.length / 1e3:6.2f} ms at {(gap.start - t0_us) / 1e3:7.1f} ms: {names[:150]}")


def time_calls(engine) -> dict[str, list[float]]:
    """Wraps the executor's set-up steps with CPU timers (ms per call)."""
    ex = engine.executor
    spent: dict[str, list[float]] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent.setdefault(name, []).append((time.perf_counter() - t) * 1e3)
        return wrapper

    from lychee_grpc.engine.lm import executor as executor_module

    executor_module.host_plan = timed("host_plan", executor_module.host_plan)
    ex.attention.plan = timed("attention.plan", ex.attention.plan)
    ex.lm.rotary_emb.forward = timed("rotary_emb", ex.lm.rotary_emb.forward)
    ex.staging.copy = timed("staging.copy", ex.staging.copy)
    ex.run = timed("run", ex.run)
    layer0 = ex.lm.layers[0].self_attn.k_proj
    layer0.forward = timed("layer 0 k_proj (first call marks the loop start)", layer0.forward)
    return spent


class GcClock:
    """Time spent in Python's garbage collector, per generation."""

    def __init__(self):
        self.spent: dict[int, float] = {}
        self._start = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            gen = info["generation"]
            self.spent[gen] = self.spent.get(gen, 0.0) + (time.perf_counter() - self._start) * 1e3

    def take(self) -> str:
        out = ", ".join(f"gen{g} {ms:.1f} ms" for g, ms in sorted(self.spent.items())) or "none"
        self.spent = {}
        return out


async def main_async() -> None:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    p.add_argument("--switch-ms", type=float, default=0.0, help="sys.setswitchinterval in ms (0: leave)")
    a = p.parse_args()
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    if a.switch_ms:
        sys.setswitchinterval(a.switch_ms / 1e3)
    print(f"torch threads {torch.get_num_threads()}, GIL switch interval {sys.getswitchinterval() * 1e3:.1f} ms")
    clock = GcClock()
    loaded = build_model()
    print("RANDOM weights, Qwen2.5-VL-7B shape")
    engine = Engine(EngineConfig(model="random-7b", warmup=True, preprocess_threads=8), loaded)
    await engine.start()
    tok = loaded.processor.tokenizer
    for name, (query, docs) in (("T100", text_workload(tok, 1)), ("I100 cold", image_workload(tok, 7))):
        for _ in range(3):  # compile and warm
            engine.executor.vision_cache.clear()
            await score_documents(engine, query, docs)
        engine.executor.vision_cache.clear()
        torch.cuda.synchronize()
        clock.take()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            marker = torch.cuda.Event(enable_timing=False)
            marker.record()
            t0 = time.perf_counter()
            ranking = await score_documents(engine, query, docs)
            wall = (time.perf_counter() - t0) * 1e3
            collected = clock.take()
        t0_us = min(e.time_range.start for e in prof.events())
        print(f"{name}: preprocessing {ranking.stats.timings.preprocess_ms:.1f} ms; garbage collection {collected} "
              f"(frozen objects: {gc.get_freeze_count()})")
        report(name, prof, wall, t0_us)
        if name != "T100":
            continue
        spent = time_calls(engine)
        await score_documents(engine, query, docs)
        print("  CPU ms per call: " + ", ".join(f"{k} {[v if isinstance(v, tuple) else round(v, 2) for v in vs][:4]}"
                                                for k, vs in spent.items()))
    await engine.stop()


if __name__ == "__main__":
    asyncio.run(main_async())
