"""GPU benchmark: 100-candidate reranks with a full-size Qwen2.5-VL-7B shape, RANDOM weights.

Workloads (see bench/RESULTS.md): T100, I100 (cold), I100_warm, MM100 (mixed query and documents:
a 512x512 image + text against 100 x (640x480 image + 60 tokens), cold) and MM100_warm, I100_hires
(896x896 at the model's default pixel bound) and I100_hires_capped (same, --max-image-model-pixels
448*448), one pair and Explain through the server (bench/pair.py), C8 (8 gRPC clients for
--c8-seconds), and the plain transformers way REF_T100 / REF_I100 / REF_MM100 (left padding,
batches of 16) on the same weights. Our paths run under a 24 GiB process cap (an A10 / RTX 3090).

    python -m bench.run --tiny .cache/tiny-model        # on the GPU machine
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import itertools
import json
import math
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from bench.ab import parse_settings
from bench.harness.floor import (
    FLOP_PER_TOKEN,
    VISION_FLOP_448,
    VISION_FLOP_PER_PATCH,
    image_patches,
    matmul_tflops,
    summary,
)
from bench.harness.model import DEFAULT_TINY, ROOT, Shape, build_model
from bench.harness.partial import WrittenAsFilled
from bench.harness.timing import collector_as_served, compare, pct, time_engine, time_reference
from bench.harness.workloads import image_workload, mixed_workload, text_workload
from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.model.reference import reference_logits
from lychee_grpc.engine.prompt.template import DEFAULT_INSTRUCTION


def log(msg: str) -> None:
    print(msg, flush=True)


def run_c8(engine_config, loaded, seconds: float, tok, started: threading.Event | None = None) -> dict:
    """8 gRPC clients through the real server for `seconds` after 3 s of warm-up; `started` is set
    when the clients start (bench/profile/c8_timeline.py records a window from it)."""
    import grpc

    from bench.pair import Server
    from lychee_grpc.client import LycheeClient
    from lychee_grpc.proto import lychee_pb2 as pb

    server = Server(loaded, engine_config)
    workloads = []
    for seed in range(16):
        q, docs = text_workload(tok, 1000 + seed)
        workloads.append((q.parts[0].text, [pb.Document(id=d.id, parts=[pb.Part(text=d.parts[0].text)]) for d in docs]))
    calls = itertools.count()

    def request(k: int) -> pb.RerankRequest:
        # A query never sent before: the pair-score cache, deduplication and single flight would
        # otherwise answer the repeats (C8 measures computed candidates, as before the cache).
        query, docs = workloads[k % len(workloads)]
        return pb.RerankRequest(query=pb.Query(parts=[pb.Part(text=f"{query} {next(calls)}")]), documents=docs)
    latencies: list[float] = []
    computed = [0]
    errors: dict[str, int] = {}  # by status code: a refusal must show, not end its client's thread
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds + 3

    def client(cid: int):
        with LycheeClient(server.target, timeout=60) as c:
            k = cid
            while time.perf_counter() < stop_at:
                req = request(k)
                t0 = time.perf_counter()
                try:
                    resp = c.stub.Rerank(req, timeout=60)
                except grpc.RpcError as exc:
                    with lock:
                        errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    k += 8
                    continue
                t1 = time.perf_counter()
                if t0 > stop_at - seconds:  # skip the first 3 s (warm-up)
                    with lock:
                        latencies.append((t1 - t0) * 1e3)
                        computed[0] += resp.usage.computed_tokens
                k += 8

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    if started is not None:
        started.set()
    for t in threads:
        t.join()
    stats = server.app.engine_client.stats() if server.app.engine_client is not None else []
    server.stop()
    n = len(latencies)
    return {"requests": n, "candidates_per_s": round(n * 100 / seconds, 1), "p50_ms": round(pct(latencies, 0.5), 1),
            "p95_ms": round(pct(latencies, 0.95), 1), "p99_ms": round(pct(latencies, 0.99), 1),
            "needed_tflops": round(computed[0] * FLOP_PER_TOKEN / seconds / 1e12, 1), "errors": errors,
            "oom_splits": sum(st.oom_splits for st in stats), "oom_retries": sum(st.oom_retries for st in stats),
            "oom_refusals": sum(st.oom_refusals for st in stats)}


async def exactness_fp32(tiny: str) -> dict:
    """Fast path vs the plain reference in float32 on the GPU, on a 7B-width model cut to 4 LM
    and 4 vision layers (the full 28 layers in float32 would not fit beside the bf16 model)."""
    loaded = build_model(tiny, Shape(layers=4, vision_depth=4), dtype=torch.float32)
    tok = loaded.processor.tokenizer
    # cuDNN runs float32 convolutions in TF32 by default: the reference's patch Conv3d would be
    # the one rounded (ours is a float32 GEMM). Compare true float32 with true float32.
    torch.backends.cudnn.allow_tf32 = False
    engine = Engine(EngineConfig(model="random-7b-width-4-layers-fp32", warmup=False), loaded)
    await engine.start()
    out = {}
    for name, (query, docs) in {"text": text_workload(tok, 11), "image": image_workload(tok, 12)}.items():
        docs = docs[:24] if name == "text" else docs[:8]
        ranking = await score_documents(engine, query, docs)
        ref = reference_logits(loaded.model, loaded.processor, DEFAULT_INSTRUCTION, query.parts,
                               [d.parts for d in docs], batch_size=1)
        fast = {s.index: s.score for s in ranking.scores}
        out[name] = max(abs(fast[i] - 1 / (1 + math.exp(-float(z)))) for i, z in enumerate(ref))
    await engine.stop()
    log(f"fp32 exactness on the GPU (4+4 layers, 7B width): max |score diff| text {out['text']:.2e}, "
        f"image {out['image']:.2e}")
    torch.backends.cudnn.allow_tf32 = True
    # bf16: the varlen attention path against the padded-mask path, same weights and inputs.
    loaded.model.to(torch.bfloat16)
    loaded.dtype = torch.bfloat16
    engine = Engine(EngineConfig(model="random-7b-width-4-layers-bf16", warmup=False), loaded)
    await engine.start()
    attention = engine.executor.attention
    out["varlen_used"] = attention.use_varlen
    out["varlen_repeats_kv"] = attention._varlen_expand_kv
    for name, (query, docs) in {"text": text_workload(tok, 11), "image": image_workload(tok, 12)}.items():
        docs = docs[:24] if name == "text" else docs[:8]
        got = {}
        for varlen in (True, False):
            attention.use_varlen = varlen and out["varlen_used"]
            ranking = await score_documents(engine, query, docs)
            got[varlen] = {s.index: s.score for s in ranking.scores}
        out[f"bf16_varlen_vs_padded_{name}"] = max(abs(got[True][i] - got[False][i]) for i in got[True])
    await engine.stop()
    del engine, loaded
    torch.cuda.empty_cache()
    log(f"bf16 varlen vs padded SDPA: {out}")
    return {k: (float(f"{v:.3g}") if isinstance(v, float) else v) for k, v in out.items()}


async def main_async(a) -> dict:
    loaded = build_model(a.tiny)
    tok = loaded.processor.tokenizer
    gpu = torch.cuda.get_device_name()
    log(f"== lychee-grpc benchmark on {gpu}: Qwen2.5-VL-7B shape with RANDOM weights (not a trained model); "
        f"scores are compared with the plain transformers path on the same weights")
    log(f"torch {torch.__version__}")
    matmul = matmul_tflops()
    log(f"bf16 8192^3 matmul: {matmul:.0f} TFLOP/s")
    results: dict = {"gpu": gpu, "matmul_tflops": round(matmul, 1), "random_weights": True,
                     "date": dt.date.today().isoformat()}
    W = WrittenAsFilled(partial_path(a.out, gpu), results)  # kept where the call runs past its limit
    texts = [text_workload(tok, s) for s in range(4)]
    images = [image_workload(tok, 100 + s) for s in range(a.iters + 2)]

    # The plain way, uncapped (left padding, batches of 16, full HF forward).
    ref_t_times, ref_t_logits = time_reference(loaded, texts, a.ref_iters + 1)
    ref_t_times = ref_t_times[1:]
    # The reference's own bf16 noise: the same pairs at batch 1 (no padding) instead of 16.
    q0, d0 = texts[0]
    r1 = reference_logits(loaded.model, loaded.processor, DEFAULT_INSTRUCTION, q0.parts, [d.parts for d in d0], 1)
    self_cmp = compare(r1, ref_t_logits[0])
    results["ref_bf16_self_diff_bs16_vs_bs1"] = self_cmp["max_abs_diff_vs_ref"]
    results["ref_bf16_self_order_flips_over_2e-2"] = self_cmp["order_flips_over_2e-2"]
    log(f"reference bf16 noise, batch 1 vs batch 16: max |score diff| {self_cmp['max_abs_diff_vs_ref']:.4f}, "
        f"{self_cmp['order_flips_over_2e-2']} pairs ordered differently by more than 2e-2")
    ref_i_times, ref_i_logits = time_reference(loaded, images[:2], 3)
    ref_i_times = ref_i_times[1:]
    mixed = [mixed_workload(tok, 200 + s) for s in range(a.iters + 2)] if a.mixed else []
    if mixed:
        ref_m_times, ref_m_logits = time_reference(loaded, mixed[:2], 3)
        ref_m_times = ref_m_times[1:]

    # Ours, capped at 24 GiB for the process.
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, a.cap_gib * 2**30 / total))
    settings = parse_settings(a.engine)
    base = dict(model="random-qwen2.5-vl-7b", warmup=True, preprocess_threads=8, **settings)
    results["engine_settings"] = a.engine or "defaults"
    engine = Engine(EngineConfig(**base), loaded)
    await engine.start()
    with collector_as_served():  # the collector as the server runs it, until this engine stops

        if a.compare_eager:
            from lychee_grpc.engine.lm.fused import FusedOps

            fused = engine.executor.ops
            engine.executor.ops = FusedOps(torch.device("cpu"))  # eager kernels
            e_times, _ = await time_engine(engine, texts, a.iters, cold=False, warmup=1)
            W["T100_eager_elementwise"] = summary("T100 (eager elementwise)", e_times,
                                                  10889 * FLOP_PER_TOKEN, matmul)
            engine.executor.ops = fused
        t_times, t_rank = await time_engine(engine, texts, a.iters, cold=False, warmup=3)
        t_tokens = t_rank[0].stats.usage.computed_tokens
        pre = statistics.median(r.stats.timings.preprocess_ms for r in t_rank)
        W["T100"] = summary("T100", t_times, t_tokens * FLOP_PER_TOKEN, matmul,
                            {"computed_tokens": t_tokens, "preprocess_ms": round(pre, 1),
                             **compare(t_rank[0], ref_t_logits[0]),
                             "vs_ref_batch1": compare(t_rank[0], r1)})
        W["REF_T100"] = summary("REF_T100", ref_t_times, t_tokens * FLOP_PER_TOKEN, matmul)
        # T100 again with every title met before: the token cache of documents' text answers them.
        await time_engine(engine, texts, len(texts), cold=False, warmup=0, text_seen=True)  # each workload once
        s_times, s_rank = await time_engine(engine, texts, a.iters, cold=False, warmup=0, text_seen=True)
        W["T100_seen"] = summary("T100_seen", s_times, t_tokens * FLOP_PER_TOKEN, matmul,
                                 {"preprocess_ms": round(statistics.median(r.stats.timings.preprocess_ms
                                                                           for r in s_rank), 1)})
        log(f"  T100 bf16 scores vs REF at batch 16: {compare(t_rank[0], ref_t_logits[0])}; "
            f"vs REF at batch 1: {W['T100']['vs_ref_batch1']}")

        i_times, i_rank = await time_engine(engine, images, a.iters, cold=True, warmup=1)
        i_tokens = i_rank[0].stats.usage.computed_tokens
        i_pre = statistics.median(r.stats.timings.preprocess_ms for r in i_rank)
        W["I100"] = summary("I100", i_times, i_tokens * FLOP_PER_TOKEN + 100 * VISION_FLOP_448, matmul,
                            {"computed_tokens": i_tokens, "preprocess_ms": round(i_pre, 1)})
        w_times, w_rank = await time_engine(engine, images[:1], a.iters, cold=False, warmup=1)
        W["I100_warm"] = summary("I100_warm", w_times, i_tokens * FLOP_PER_TOKEN, matmul,
                                 {"cached_images": w_rank[0].stats.usage.cached_images,
                                  "preprocess_ms": round(statistics.median(r.stats.timings.preprocess_ms
                                                                           for r in w_rank), 1)})
        # Parity on images: our cold run on workload 0 vs the reference's logits on the same inputs.
        _, first = await time_engine(engine, images[:1], 1, cold=True, warmup=0)
        W["I100"].update(compare(first[0], ref_i_logits[0]))
        W["REF_I100"] = summary("REF_I100", ref_i_times, i_tokens * FLOP_PER_TOKEN + 100 * VISION_FLOP_448, matmul)
        for k in ("T100", "I100"):
            W[k]["ratio_vs_ref"] = round(W[f"REF_{k}"]["p50_ms"] / W[k]["p50_ms"], 2)
            log(f"  {k} is {W[k]['ratio_vs_ref']}x faster than REF_{k}")

        if mixed:
            flop_images = (image_patches(loaded.processor, 512, 512)
                           + 100 * image_patches(loaded.processor, 640, 480)) * VISION_FLOP_PER_PATCH
            m_times, m_rank = await time_engine(engine, mixed, a.iters, cold=True, warmup=1)
            m_tokens = m_rank[0].stats.usage.computed_tokens
            W["MM100"] = summary("MM100 (mixed-mixed, cold)", m_times, m_tokens * FLOP_PER_TOKEN + flop_images, matmul,
                                 {"computed_tokens": m_tokens, "preprocess_ms": round(statistics.median(
                                     r.stats.timings.preprocess_ms for r in m_rank), 1)})
            mw_times, _ = await time_engine(engine, mixed[:1], a.iters, cold=False, warmup=1)
            W["MM100_warm"] = summary("MM100_warm", mw_times, m_tokens * FLOP_PER_TOKEN, matmul)
            _, first_m = await time_engine(engine, mixed[:1], 1, cold=True, warmup=0)
            W["MM100"].update(compare(first_m[0], ref_m_logits[0]))
            W["REF_MM100"] = summary("REF_MM100", ref_m_times, m_tokens * FLOP_PER_TOKEN + flop_images, matmul)
            W["MM100"]["ratio_vs_ref"] = round(W["REF_MM100"]["p50_ms"] / W["MM100"]["p50_ms"], 2)
            log(f"  MM100 is {W['MM100']['ratio_vs_ref']}x faster than REF_MM100")

        if a.hires:
            hires = [image_workload(tok, 500 + s, size=896) for s in range(3)]
            h_times, h_rank = await time_engine(engine, hires, 2, cold=True, warmup=1)
            W["I100_hires_default_bound"] = summary("I100_hires (896px, default bound)", h_times,
                                                    h_rank[0].stats.usage.computed_tokens * FLOP_PER_TOKEN
                                                    + 400 * VISION_FLOP_448, matmul)
    # Each engine gives its GPU memory back before the next one starts: beside a stopped engine that
    # kept its 2 GiB vision cache (full of 896x896 images) and graphs, run 29's capped engine and C8
    # ran out of memory under the 24 GiB cap (one engine to a process when serving).
    await engine.stop()
    del engine
    free_gpu("the main engine")
    if a.hires:
        capped = Engine(EngineConfig(**{**base, "max_image_pixels": 448 * 448}), loaded)
        await capped.start()
        with collector_as_served():  # the collector as the server runs it, until this engine stops
            c_times, c_rank = await time_engine(capped, hires, 2, cold=True, warmup=1)
            W["I100_hires_capped_448"] = summary("I100_hires (896px, max pixels 448*448)", c_times,
                                                 c_rank[0].stats.usage.computed_tokens * FLOP_PER_TOKEN
                                                 + 100 * VISION_FLOP_448, matmul)
        await capped.stop()
        del capped
        free_gpu("the capped engine")

    if a.pair_iters > 0:
        from bench.pair import run as pair_run

        pair = await asyncio.to_thread(pair_run, loaded, settings, a.pair_iters, False)
        free_gpu("the pair server")
        W["PAIR"] = pair
        log(f"  one pair and Explain through the server: {pair}")

    if a.c8_seconds > 0:
        c8 = run_c8(EngineConfig(**base), loaded, a.c8_seconds, tok)
        c8["fraction_of_matmul"] = round(c8["needed_tflops"] / matmul, 2)
        c8["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        W["C8"] = c8
        log(f"  C8: {c8}")
    torch.cuda.set_per_process_memory_fraction(1.0)
    results["fp32_max_abs_diff"] = await exactness_fp32(a.tiny)
    return results


def free_gpu(what: str) -> None:
    """Collects what a stopped engine or server left and returns the cached blocks, saying what is
    still allocated (the model's weights, and anything still referenced)."""
    gc.collect()
    torch.cuda.empty_cache()
    log(f"  after {what}: {torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated")


def partial_path(out: str, gpu: str) -> Path:
    """Where the run's results stand while it runs (removed once the whole run is written)."""
    return Path(out) / f"{gpu.lower().replace(' ', '-')}.partial.json"


def table(results: dict) -> str:
    rows = ["| workload | p50 ms | p95 ms | floor ms | p50/floor | cand/s | peak GiB | needed TFLOP/s | x vs ref |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, w in results["workloads"].items():
        if "p50_ms" not in w:
            continue
        floor = w.get("floor_ms")
        ratio = f"{w['p50_ms'] / floor:.2f}" if floor else ""
        rows.append(f"| {name} | {w['p50_ms']} | {w['p95_ms']} | {floor or ''} | {ratio} | {w['candidates_per_s']} "
                    f"| {w.get('peak_gib', '')} | {w['needed_tflops']} | {w.get('ratio_vs_ref', '')} |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", default=DEFAULT_TINY, help="tokenizer + image processor source")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--ref-iters", type=int, default=4)
    p.add_argument("--cap-gib", type=float, default=24.0)
    p.add_argument("--c8-seconds", type=float, default=30.0)
    p.add_argument("--hires", action="store_true")
    p.add_argument("--mixed", action=argparse.BooleanOptionalAction, default=True,
                   help="MM100 / MM100_warm and REF_MM100")
    p.add_argument("--pair-iters", type=int, default=20, help="one pair and Explain through the server (0: skip)")
    p.add_argument("--engine", default="", help="EngineConfig settings for every engine of the run, key=value,...")
    p.add_argument("--compare-eager", action="store_true", help="also time T100 without the fused kernels")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("python -m bench.run needs a CUDA GPU (timings are reported from the GPU only)", file=sys.stderr)
        return 2
    results = asyncio.run(main_async(a))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = results["gpu"].lower().replace(" ", "-")
    (out / f"{name}.json").write_text(json.dumps(results, indent=2))
    partial_path(a.out, results["gpu"]).unlink(missing_ok=True)
    print("\nRANDOM WEIGHTS (Qwen2.5-VL-7B shape): timings are real, scores are not relevance judgements.")
    print(f"GPU {results['gpu']}, bf16 matmul {results['matmul_tflops']} TFLOP/s, {results['date']}\n")
    print(table(results))
    print(json.dumps(results, indent=1))
    append_to_history(results, ROOT / "bench" / "results" / "history.md")
    return 0


def append_to_history(results: dict, path: Path) -> None:
    """Appends the date, the exact command and the table to the run log (bench/results/history.md);
    RESULTS.md keeps what the runs found."""
    command = shlex.join(["python3", "-m", "bench.run", *sys.argv[1:]])
    entry = (f"\n### {results['date']}, {results['gpu']}, bf16 matmul {results['matmul_tflops']} TFLOP/s, "
             f"RANDOM weights\n\n    {command}\n\n{table(results)}\n")
    text = path.read_text() if path.exists() else "# Run log\n"
    path.write_text(text + entry)


if __name__ == "__main__":
    sys.exit(main())
