"""Explain's cost on the GPU: one pair (12-token query; 448x448 JPEG + 40-word title; grid 4 ->
56 fragments) against Rerank of the same query over 57 documents and over the pair alone.
Full-size Qwen2.5-VL-7B shape with RANDOM weights (bench/run.py's build_model): timings only.

    python -m bench.explain --tiny .cache/tiny-model        # on the GPU machine
    python -m bench.explain --on-tiny                       # here: the tiny checkpoint on the CPU (shape only)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import torch

from bench.harness.model import DEFAULT_TINY, build_model
from bench.harness.workloads import jpeg, words_of_tokens
from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.lifecycle import Lifecycle
from lychee_grpc.service import Service
from lychee_grpc.service.types import (
    Document,
    ExplainOptions,
    ImagePart,
    Query,
    RerankOptions,
    TextPart,
)


async def timed(make, iters: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(iters):
        start = time.perf_counter()
        out = await make()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), out


async def main_async(a) -> None:
    if a.on_tiny:
        from lychee_grpc.engine.model.loader import load_model

        loaded = load_model(EngineConfig(model=a.tiny))
        print("== Explain cost of the TINY checkpoint on the CPU: the shape of the work, not GPU timings", flush=True)
        config = EngineConfig(model=a.tiny, warmup=False)
    else:
        loaded = build_model(a.tiny)
        print(f"== Explain cost on {torch.cuda.get_device_name()}: Qwen2.5-VL-7B shape, RANDOM weights", flush=True)
        config = EngineConfig(model="random-qwen2.5-vl-7b", warmup=True, preprocess_threads=8)
    tok = loaded.processor.tokenizer
    engine = Engine(config, loaded)
    await engine.start()
    lifecycle = Lifecycle()
    lifecycle.serve()
    service = Service(lifecycle, engine=engine)
    rng = random.Random(7)
    query = Query((TextPart(words_of_tokens(tok, rng, 12)),))
    title = " ".join(rng.choice(("retro", "denim", "jacket", "slim", "blue", "spring", "women", "coat", "wash",
                                 "vintage")) for _ in range(40))

    def pair(seed: int) -> Document:  # a new image each time: cold vision tower, as a first explanation is
        return Document("p", (ImagePart(jpeg(random.Random(seed), 448)), TextPart(title)))

    seeds = iter(range(1000))
    await service.explain(query, pair(next(seeds)), ExplainOptions(grid_size=4))  # warm the paths
    ex_ms, outcome = await timed(lambda: service.explain(query, pair(next(seeds)), ExplainOptions(grid_size=4)),
                                 a.iters)
    n = len(outcome.fragments)
    one_ms, _ = await timed(lambda: service.rerank(query, [pair(next(seeds))], RerankOptions()), a.iters)

    def batch() -> list[Document]:
        # The same shape as the explanation's documents: n text variants reuse one image, n-ish cells are new.
        image_seed = next(seeds)
        docs = [Document(str(k), (ImagePart(jpeg(random.Random(image_seed), 448)), TextPart(title)))
                for k in range(n + 1 - 16)]
        docs += [pair(next(seeds)) for _ in range(16)]
        return docs

    batch_ms, _ = await timed(lambda: service.rerank(query, batch(), RerankOptions()), a.iters)
    print(f"fragments {n} (usage {outcome.usage}); p50 over {a.iters}: explain {ex_ms:.0f} ms, "
          f"rerank of the pair {one_ms:.0f} ms, rerank of {n + 1} documents of the same make-up {batch_ms:.0f} ms "
          f"(explain / that rerank = {ex_ms / batch_ms:.2f})", flush=True)
    await engine.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", default=DEFAULT_TINY)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--on-tiny", action="store_true", help="score with the tiny checkpoint itself (CPU)")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
