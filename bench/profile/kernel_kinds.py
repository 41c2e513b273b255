"""Which kernels one request's GPU time goes to, by kind (GEMMs, attention, norms, SiLU*up, RoPE,
copies, other), and the GPU's busy time and longest idle gaps (c8_timeline's report), for T100,
I100 cold, MM100 cold (`--only`) and Explain (bench.profile.trace's pair: a 448x448 JPEG, a 40-word title, grid 4);
RANDOM weights of the 7B shape. One request under the profiler after three untimed ones.

    python -m bench.profile.kernel_kinds --tiny .cache/tiny-model --only Explain
    python -m bench.profile.kernel_kinds --tiny .cache/tiny-model --only "I100 cold" --top 5
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections import defaultdict

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.harness.model import DEFAULT_TINY
from bench.harness.timing import collector_as_served
from bench.harness.workloads import image_workload, mixed_workload, text_workload
from bench.profile.c8_timeline import idle_report
from bench.profile.trace import explain_workload, run_once, started_engine

KINDS = (
    ("gemm", re.compile(r"nvjet|gemm|cutlass|sm90_xmma|ampere_bf16|_mm_|matmul", re.I)),
    ("attention", re.compile(r"attn|attention|flash|fmha|window|cudnn", re.I)),
    ("norm", re.compile(r"rms|norm", re.I)),
    ("silu*up", re.compile(r"silu|swiglu", re.I)),
    # torch.compile's RoPE kernel is named for its ops: x * cos + cat(-x2, x1) * sin
    ("rope", re.compile(r"rope|rotary|fused_add_cat_mul_neg", re.I)),
    ("copy/cat", re.compile(r"copy|cat|memcpy|memset|fill|index|gather|scatter", re.I)),
)


def kind(name: str) -> str:
    for label, pattern in KINDS:
        if pattern.search(name):
            return label
    return "other"


def report(name: str, prof, wall_ms: float, top: int = 0) -> None:
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    table: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    names: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in kernels:
        key = kind(e.name)
        ms = (e.time_range.end - e.time_range.start) / 1e3
        table[key][0] += ms
        table[key][1] += 1
        names[key][e.name[:70]] += ms
    t0 = min(e.time_range.start for e in prof.events())
    first = min((e.time_range.start for e in kernels), default=t0) - t0
    print(f"\n{name}: wall {wall_ms:.1f} ms, kernels {sum(v[0] for v in table.values()):.1f} ms, "
          f"first kernel {first / 1e3:.1f} ms after the profiler's first event")
    if kernels:
        idle_report([(e.time_range.start, e.time_range.end, e.name) for e in kernels], wall_ms * 1e3, top=8)
    print(f"  {'kind':10s} {'ms':>8s} {'kernels':>8s}  largest")
    for kd, (ms, n) in sorted(table.items(), key=lambda kv: -kv[1][0]):
        largest = max(names[kd].items(), key=lambda kv: kv[1])
        print(f"  {kd:10s} {ms:8.2f} {n:8d}  {largest[0]} ({largest[1]:.2f})")
        for kernel, kernel_ms in sorted(names[kd].items(), key=lambda kv: -kv[1])[1:top]:
            print(f"  {'':10s} {'':8s} {'':8s}  {kernel} ({kernel_ms:.2f})")


async def main_async() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", default=DEFAULT_TINY)
    ap.add_argument("--only", default="T100,I100 cold,Explain")
    ap.add_argument("--top", type=int, default=1, help="the largest N kernels of each kind, by name")
    a = ap.parse_args()
    engine, loaded = await started_engine(a.tiny)
    ex = engine.executor
    tok = loaded.processor.tokenizer
    with collector_as_served():  # as the server runs it
        for name, (query, docs) in (("T100", text_workload(tok, 1)), ("I100 cold", image_workload(tok, 7)),
                                    ("MM100 cold", mixed_workload(tok, 11)),
                                    ("Explain", explain_workload(tok))):
            if name not in a.only.split(","):
                continue
            for _ in range(3):
                ex.vision_cache.clear()
                await run_once(engine, query, docs)
            ex.vision_cache.clear()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                t0 = time.perf_counter()
                await run_once(engine, query, docs)
                torch.cuda.synchronize()
                wall = (time.perf_counter() - t0) * 1e3
            report(name, prof, wall, a.top)
    await engine.stop()


if __name__ == "__main__":
    asyncio.run(main_async())
