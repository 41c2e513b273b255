"""GPU diagnostics for the benchmark's workloads (RANDOM weights, 7B shape): where the time goes
(torch.profiler, top CUDA kernels), and how far bf16 scores move between the plain reference at
batch 16 and at batch 1 (the reference's own noise) versus our fast path.

    python -m bench.profile.diagnose --tiny .cache/tiny-model
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time

import torch

from bench.harness.model import DEFAULT_TINY, build_model
from bench.harness.workloads import image_workload, text_workload
from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.model.reference import reference_logits
from lychee_grpc.engine.prompt.template import DEFAULT_INSTRUCTION


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


async def main_async(a) -> None:
    loaded = build_model(a.tiny)
    tok = loaded.processor.tokenizer
    print("RANDOM weights, Qwen2.5-VL-7B shape")
    engine = Engine(EngineConfig(model="random-7b", warmup=False, preprocess_threads=8), loaded)
    await engine.start()
    query, docs = text_workload(tok, 0)
    docs = docs[: a.docs]
    pairs = [d.parts for d in docs]
    r16 = reference_logits(loaded.model, loaded.processor, DEFAULT_INSTRUCTION, query.parts, pairs, 16)
    r1 = reference_logits(loaded.model, loaded.processor, DEFAULT_INSTRUCTION, query.parts, pairs, 1)
    ranking = await score_documents(engine, query, docs)
    fast = torch.tensor([s.logit for s in sorted(ranking.scores, key=lambda s: s.index)])
    s16, s1, sf = ([sig(float(z)) for z in t] for t in (r16, r1, fast))
    print(f"logit range ref1 [{r1.min():.2f}, {r1.max():.2f}], score range [{min(s1):.3f}, {max(s1):.3f}]")
    print(f"max |score| diff: ref16 vs ref1 {max(abs(x - y) for x, y in zip(s16, s1)):.4f}; "
          f"fast vs ref1 {max(abs(x - y) for x, y in zip(sf, s1)):.4f}; fast vs ref16 "
          f"{max(abs(x - y) for x, y in zip(sf, s16)):.4f}")

    from torch.profiler import ProfilerActivity, profile

    for name, (q, d, cold) in {"T100": (*text_workload(tok, 1), False),
                               "I100": (*image_workload(tok, 7), True)}.items():
        for _ in range(2):
            if cold:
                engine.executor.vision_cache.clear()
            await score_documents(engine, q, d)
        if cold:
            engine.executor.vision_cache.clear()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            r = await score_documents(engine, q, d)
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) * 1e3
        print(f"\n== {name}: {wall:.1f} ms wall, preprocess {r.stats.timings.preprocess_ms:.1f} ms, "
              f"inference {r.stats.timings.inference_ms:.1f} ms, queue {r.stats.timings.queue_ms:.1f} ms")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=a.rows, max_name_column_width=60))
    await engine.stop()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", default=DEFAULT_TINY)
    p.add_argument("--docs", type=int, default=100)
    p.add_argument("--rows", type=int, default=22)
    a = p.parse_args()
    asyncio.run(main_async(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
