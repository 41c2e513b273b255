"""p50 of T100, I100 cold and I100 warm through `Engine.rerank` (RANDOM weights, 7B shape) for
whichever `lychee_grpc` is first on the path: run it for two checkouts, alternating, to compare
code on one machine.

    PYTHONPATH=old-checkout python bench/ab.py --label old
    python bench/ab.py --label new
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after PYTHONPATH: a checkout there wins


async def main_async() -> None:
    import lychee_grpc
    from bench.run import build_model, image_workload, text_workload
    from lychee_grpc.engine.config import EngineConfig
    from lychee_grpc.engine.engine import Engine
    from lychee_grpc.engine.vision.cache import VisionCache

    p = argparse.ArgumentParser()
    p.add_argument("--label", default="")
    p.add_argument("--text", type=int, default=10)
    p.add_argument("--image", type=int, default=6)
    a = p.parse_args()
    loaded, _ = build_model(".cache/tiny-model")
    engine = Engine(EngineConfig(model="random-7b", warmup=True), loaded)
    await engine.start()
    tok = loaded.processor.tokenizer
    text, images = text_workload(tok, 1), image_workload(tok, 7)

    async def p50(workload, n: int, cold: bool) -> float:
        times = []
        for i in range(n + 2):
            if cold:
                engine.executor.vision_cache = VisionCache(1 << 32)
            torch.cuda.synchronize()
            t = time.perf_counter()
            await engine.rerank(*workload)
            if i >= 2:  # the first two compile and warm
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    t100 = await p50(text, a.text, False)
    cold = await p50(images, a.image, True)
    warm = await p50(images, a.image, False)
    print(f"{a.label or Path(lychee_grpc.__file__).parent}: T100 {t100:.1f} ms, I100 cold {cold:.1f} ms, "
          f"I100 warm {warm:.1f} ms (RANDOM weights, {torch.cuda.get_device_name()})", flush=True)
    await engine.stop()


if __name__ == "__main__":
    asyncio.run(main_async())
