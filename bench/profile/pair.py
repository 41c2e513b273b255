"""Where a single pair's time goes (RANDOM weights, 7B shape): the wall time of one text pair and one
448x448 image pair through the engine, the GPU's busy time inside it (the sum of its kernels), and
torch's profiler table of host-side operations over a few pairs (launch counts, synchronisations,
copies). A pair's GPU work is a few milliseconds; the rest of its wall time is host work, and this
says which.

    python -m bench.profile.pair
    python -m bench.profile.pair --pairs 10 --rows 30
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench.harness.model import DEFAULT_TINY, build_model
from bench.harness.timing import forget_images, sync
from bench.harness.workloads import image_pair, text_pair
from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine


async def run(a: argparse.Namespace) -> None:
    loaded = build_model(a.tiny)
    engine = Engine(EngineConfig(model="random-qwen2.5-vl", warmup=True, preprocess_threads=8), loaded)
    await engine.start()
    tok = loaded.processor.tokenizer
    kinds = {"text pair": [text_pair(tok, 300 + s) for s in range(8)],
             "448x448 image pair (cold)": [image_pair(tok, 400 + s) for s in range(8)]}
    print(f"== {torch.cuda.get_device_name()}, Qwen2.5-VL 7B shape, RANDOM weights")
    for name, pairs in kinds.items():
        cold = "image" in name
        for q, d in pairs * 2:  # warm-up: compilation, allocator
            if cold:
                forget_images(engine)
            await score_documents(engine, q, d)
        walls = []
        for i in range(a.pairs):
            q, d = pairs[i % len(pairs)]
            if cold:
                forget_images(engine)
            sync()
            t = time.perf_counter()
            await score_documents(engine, q, d)
            sync()
            walls.append((time.perf_counter() - t) * 1e3)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(a.profiled):
                q, d = pairs[i % len(pairs)]
                if cold:
                    forget_images(engine)
                await score_documents(engine, q, d)
            sync()
        events = prof.key_averages()
        gpu_ms = sum(e.self_device_time_total for e in events) / 1e3 / a.profiled
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx",
                                                             "cudaLaunchKernelExC")) / a.profiled
        syncs = {e.key: e.count / a.profiled for e in events
                 if "ynchronize" in e.key or e.key in ("aten::item", "aten::_local_scalar_dense", "cudaMemcpyAsync")}
        print(f"\n### {name}: p50 {statistics.median(walls):.1f} ms wall (min {min(walls):.1f}, {a.pairs} pairs); "
              f"GPU kernels {gpu_ms:.1f} ms a pair; {launches:.0f} launches a pair; per pair: {syncs}")
        print(events.table(sort_by="self_cpu_time_total", row_limit=a.rows, max_name_column_width=60))
    await engine.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile.pair", description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=20, help="timed pairs of each kind")
    p.add_argument("--profiled", type=int, default=5, help="pairs of each kind under the profiler")
    p.add_argument("--rows", type=int, default=25, help="rows of the profiler's table")
    p.add_argument("--tiny", default=DEFAULT_TINY, help="tokenizer + image processor source")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("python -m bench.profile.pair needs a CUDA GPU", file=sys.stderr)
        return 2
    asyncio.run(run(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
