"""T100 and I100 p50 under the engine's CPU-side settings (torch threads, GIL switch interval),
all in one process on one GPU (RANDOM weights, 7B shape).

    python -m bench.profile.settings
"""

from __future__ import annotations

import asyncio
import statistics
import sys

import torch

from bench.harness.model import build_model
from bench.harness.timing import time_engine
from bench.harness.workloads import image_workload, text_workload
from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine


async def main_async() -> None:
    loaded = build_model()
    tok = loaded.processor.tokenizer
    texts = [text_workload(tok, s) for s in range(4)]
    images = [image_workload(tok, 200 + s) for s in range(8)]
    print("RANDOM weights, Qwen2.5-VL-7B shape")
    print(f"{'torch threads':>13s} {'switch ms':>9s} {'T100 p50':>9s} {'prep':>6s} {'I100 p50':>9s} {'prep':>6s}")
    for threads, switch in ((4, 0.5), (16, 5.0), (4, 5.0), (16, 0.5), (4, 0.5)):
        engine = Engine(EngineConfig(model="random-7b", warmup=True, preprocess_threads=8, torch_threads=threads),
                        loaded)
        await engine.start()
        sys.setswitchinterval(switch / 1e3)
        t_times, t_rank = await time_engine(engine, texts, 10, cold=False, warmup=2)
        i_times, i_rank = await time_engine(engine, images, 6, cold=True, warmup=1)
        await engine.stop()
        pre = [statistics.median(r.stats.timings.preprocess_ms for r in rank) for rank in (t_rank, i_rank)]
        print(f"{threads:13d} {switch:9.1f} {statistics.median(t_times):9.1f} {pre[0]:6.1f} "
              f"{statistics.median(i_times):9.1f} {pre[1]:6.1f}")
        torch.cuda.empty_cache()


if __name__ == "__main__":
    asyncio.run(main_async())
