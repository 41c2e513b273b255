"""Where a 100-candidate rerank spends its time, stage by stage, on the GPU (RANDOM weights,
7B shape): preprocessing, prefix prefill, packed scoring, vision tower; then the top kernels of
one scoring pass.

    python -m bench.profile.breakdown --tiny .cache/tiny-model
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bench.harness.model import DEFAULT_TINY, build_model
from bench.harness.workloads import image_workload, text_workload
from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.lm.executor import BatchItem
from lychee_grpc.engine.prompt.template import DEFAULT_INSTRUCTION


def timed(fn, n: int = 5) -> tuple[float, object]:
    out = None
    times = []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def prepare_with_pixels(pre, query, docs):
    """Documents prepared as a request's are, plus their images' pixels (which the engine makes in
    prefetch chunks or in the batch)."""
    prepared = pre.prepare_documents(query, list(enumerate(docs)))
    pre.fill_pixels([im for p in prepared for im in p.segment.images if im.picture is not None])
    return prepared


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", default=DEFAULT_TINY)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--cprofile", action="store_true", help="also profile the CPU preparation (Python)")
    a = p.parse_args()
    loaded = build_model(a.tiny)
    print("RANDOM weights, Qwen2.5-VL-7B shape")
    engine = Engine(EngineConfig(model="random-7b", warmup=False), loaded)
    ex, pre = engine.executor, engine.preprocessor
    tok = loaded.processor.tokenizer
    for name, (query, docs) in {"T100": text_workload(tok, 1), "I100": image_workload(tok, 2)}.items():
        t_q, pq = timed(lambda q=query: pre.prepare_query(q, DEFAULT_INSTRUCTION))
        pre.image_device = None
        t_cpu, _ = timed(lambda q=pq, d=docs: prepare_with_pixels(pre, q, d), 3)
        pre.image_device = "cuda"
        t_d, pds = timed(lambda q=pq, d=docs: prepare_with_pixels(pre, q, d), 3)
        print(f"{name}: prepare documents with images processed on cpu {t_cpu:.1f} ms, on cuda {t_d:.1f} ms")
        if a.cprofile:
            import cProfile
            import pstats

            pr = cProfile.Profile()
            pr.enable()
            prepare_with_pixels(pre, pq, docs)
            torch.cuda.synchronize()
            pr.disable()
            pstats.Stats(pr).sort_stats("cumulative").print_stats(30)
        t_p, kv = timed(lambda q=pq: ex.prefill(q.prefix))
        segs = [d.segment for d in pds]
        if name == "I100":
            images = [im for s in segs for im in s.images]

            def tower(images=images):
                ex.vision_cache.clear()
                return ex.image_embeds(images)

            t_v, _ = timed(tower, 3)
            print(f"{name}: vision tower alone for {len(images)} images: {t_v:.1f} ms")
        for chunk in (100, 50, 25):
            def score(chunk=chunk, name=name, segs=segs, kv=kv):
                if name == "I100":
                    ex.vision_cache.clear()
                return [ex.run([BatchItem(s, kv) for s in segs[i:i + chunk]])[0] for i in range(0, 100, chunk)]

            t_s, _ = timed(score, 3)
            print(f"{name}: score in batches of {chunk}: {t_s:.1f} ms")
        tokens = sum(len(s) for s in segs)
        print(f"{name}: prepare query {t_q:.1f} ms, documents {t_d:.1f} ms, prefill {t_p:.1f} ms "
              f"({len(pq.prefix)} tokens), {tokens} document tokens")
        from torch.profiler import ProfilerActivity, profile

        ex.vision_cache.clear()
        parts = {"T100": ["score"], "I100": ["vision tower", "score with the vision cache warm"]}[name]
        for part in parts:
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                if part == "vision tower":
                    ex.image_embeds([im for s in segs for im in s.images])
                else:
                    ex.run([BatchItem(s, kv) for s in segs])
                torch.cuda.synchronize()
            print(f"{name} {part}:")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=a.rows, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
