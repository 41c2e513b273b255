"""`Executor.run` of another checkout vs this checkout's, in ONE process, alternating request by
request so both see the same GPU clocks and temperature (RANDOM weights, 7B shape). The other
checkout's package is copied and renamed `lychee_old` under the folder given by --old, e.g.

    mkdir ab_old && git archive 6f7aff4 lychee_grpc | tar -x -C ab_old
    mv ab_old/lychee_grpc ab_old/lychee_old
    python bench/lm_ab.py --old ab_old

Run 18's A/B (bench/RESULTS.md): the LM residual adds made by the GEMMs (commit a148a42) against
the separate add + fused RMSNorm of commit 6f7aff4. The "previous" forward needs the old fused
add_rms_norm kernel, which this script compiles from the old package.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def main_async() -> None:
    from bench.run import build_model, image_workload, text_workload
    from lychee_grpc.engine import executor as new_ex
    from lychee_grpc.engine.config import EngineConfig
    from lychee_grpc.engine.engine import Engine
    from lychee_grpc.engine.lm.fused import Kernel

    p = argparse.ArgumentParser()
    p.add_argument("--old", required=True)
    p.add_argument("--rounds", type=int, default=12)
    a = p.parse_args()
    sys.path.insert(0, a.old)
    from lychee_old.engine import executor as old_ex
    from lychee_old.engine.fused import add_rms_norm

    old_ex.PrefixKV, old_ex.BatchItem = new_ex.PrefixKV, new_ex.BatchItem  # one set of classes
    loaded, _ = build_model(".cache/tiny-model")
    engine = Engine(EngineConfig(model="random-7b", warmup=True), loaded)
    await engine.start()
    ex = engine.executor
    ex.ops.add_rms_norm = Kernel(add_rms_norm, ex.ops.enabled)
    old_run = types.MethodType(old_ex.Executor.run, ex)
    # Older run()s also returned how many images the tower ran on; the scheduler takes two values.
    runs = {"previous": lambda items: old_run(items)[:2], "this": types.MethodType(new_ex.Executor.run, ex)}
    tok = loaded.processor.tokenizer
    print(f"RANDOM weights, Qwen2.5-VL-7B shape, {torch.cuda.get_device_name()}")
    for name, workload in (("T100", text_workload(tok, 1)), ("I100 warm", image_workload(tok, 7))):
        times: dict[str, list[float]] = {k: [] for k in runs}
        scores = {}
        for r in range(a.rounds + 1):
            for label, run in runs.items():
                ex.run = run
                torch.cuda.synchronize()
                t = time.perf_counter()
                ranking = await engine.rerank(*workload)
                if r:  # round 0 compiles and warms both
                    times[label].append((time.perf_counter() - t) * 1e3)
                scores[label] = {s.index: s.score for s in ranking.scores}
        diff = max(abs(scores["this"][i] - scores["previous"][i]) for i in scores["this"])
        print(f"{name}: " + ", ".join(f"{k} p50 {statistics.median(v):.1f} ms (min {min(v):.1f})"
                                      for k, v in times.items()) + f"; max |score diff| {diff:.3g} (bf16)")
    await engine.stop()


if __name__ == "__main__":
    asyncio.run(main_async())
