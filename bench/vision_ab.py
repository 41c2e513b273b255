"""The vision path's variants on the GPU, in one process (RANDOM weights, Qwen2.5-VL-7B shape):

1. one window layer for 100 448x448 images: the fused rotary + window attention Triton kernel
   (engine/vision_window_kernel.py) against the compiled rotary + cuDNN SDPA it replaces, with the
   largest difference of their outputs;
2. the vision tower on 25 and 100 images with the kernel on and off, alternating;
3. end to end through `Engine.rerank`, alternating request by request: I100 cold with the kernel
   on and off, and with JPEG headers read by PIL (before) or by `_jpeg_header`; T100 and I100
   warm for their ratio to the floor.

    python3 bench/vision_ab.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gpu_timing import time_ms
from bench.pinning import decode_pixels_pil_header
from bench.run import (
    FLOP_PER_TOKEN,
    VISION_FLOP_448,
    build_model,
    image_workload,
    matmul_tflops,
    text_workload,
)
from lychee_grpc.engine import prepare, vision_attention, vision_window_kernel
from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.vision.cache import VisionCache


def window_layer(engine: Engine, images: int) -> list[str]:
    """One window layer's attention (rotary included) on `images` 448x448 images."""
    ex = engine.executor
    visual = ex.visual
    attn = visual.blocks[0].attn
    tower = ex.tower
    grids = [(1, 32, 32)] * images
    layouts = [tower._layout(g) for g in grids]
    cos = torch.cat([lay.cos for lay in layouts])
    sin = torch.cat([lay.sin for lay in layouts])
    bounds = [0]
    for lay in layouts:
        for n in lay.window_lengths:
            bounds.append(bounds[-1] + n)
    cu = torch.tensor(bounds, dtype=torch.int32, device="cuda")
    vision_attention.register_plan(cu, bounds)
    n = bounds[-1]
    torch.manual_seed(0)
    hidden = torch.randn(n, visual.blocks[0].norm1.weight.shape[0], device="cuda", dtype=torch.bfloat16)
    rows = []
    outs = {}
    with torch.inference_mode():
        for label, on in (("rotary + cuDNN SDPA", False), ("fused Triton kernel", True)):
            vision_attention.window_kernel_enabled = on
            fn = lambda: attn(hidden, cu_seqlens=cu, position_embeddings=(cos, sin))  # noqa: E731
            outs[label] = fn().float()
            ms = time_ms(fn, iters=30)
            proj = time_ms(lambda: attn.qkv(hidden), iters=30) + time_ms(
                lambda: attn.proj(hidden), iters=30)
            rows.append(f"| window layer, {images} images | {label} | {ms:.3f} | {ms - proj:.3f} |")
    vision_attention.window_kernel_enabled = True
    a, b = outs.values()
    rows.append(f"| window layer, {images} images | max abs diff (bf16) | {(a - b).abs().max().item():.3g} | "
                f"rel {((a - b).norm() / a.norm()).item():.2e} |")
    return rows


def tower_ab(engine: Engine, images: int, rounds: int) -> list[str]:
    ex = engine.executor
    grids = [(1, 32, 32)] * images
    pixels = torch.randn(images * 1024, 3 * 2 * 14 * 14, device="cuda", dtype=ex.visual.dtype)
    times: dict[bool, list[float]] = {False: [], True: []}
    outs = {}
    with torch.inference_mode():
        for r in range(rounds + 1):
            for on in (False, True):
                vision_attention.window_kernel_enabled = on
                torch.cuda.synchronize()
                t = time.perf_counter()
                outs[on] = ex.tower(pixels, grids)
                torch.cuda.synchronize()
                if r:
                    times[on].append((time.perf_counter() - t) * 1e3)
    vision_attention.window_kernel_enabled = True
    diff = (outs[True].float() - outs[False].float()).abs().max().item()
    return [f"| tower, {images} images | kernel off / on (ms) | {statistics.median(times[False]):.1f} | "
            f"{statistics.median(times[True]):.1f} | max abs diff {diff:.3g} |"]


async def end_to_end(engine: Engine, tok, rounds: int, matmul: float) -> list[str]:
    images = [image_workload(tok, 100 + s) for s in range(4)]
    text = [text_workload(tok, s) for s in range(4)]
    new_decode = prepare.decode_pixels
    variants = {  # window kernel, JPEG header reader
        "I100 cold, session start (PIL headers, no kernel)": (False, decode_pixels_pil_header),
        "I100 cold, PIL headers, window kernel": (True, decode_pixels_pil_header),
        "I100 cold, this code (_jpeg_header, window kernel)": (True, new_decode),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    tokens = 0
    k = 0
    for r in range(rounds + 1):
        for label, (on, decode) in variants.items():
            vision_attention.window_kernel_enabled = on
            prepare.decode_pixels = decode
            engine.executor.vision_cache = VisionCache(engine.executor.vision_cache.capacity_bytes)
            torch.cuda.synchronize()
            t = time.perf_counter()
            ranking = await engine.rerank(*images[k % len(images)])
            k += 1
            if r:
                times[label].append((time.perf_counter() - t) * 1e3)
            tokens = ranking.stats.usage.computed_tokens
    vision_attention.window_kernel_enabled = True
    prepare.decode_pixels = new_decode
    i_floor = (tokens * FLOP_PER_TOKEN + 100 * VISION_FLOP_448) / (matmul * 1e12) * 1e3
    rows = [f"| {label} | {statistics.median(v):.1f} | {i_floor:.1f} | {statistics.median(v) / i_floor:.2f} |"
            for label, v in times.items()]
    for label, workloads in (("I100 warm", images[:1]), ("T100", text)):
        ts = []
        for i in range(12):
            torch.cuda.synchronize()
            t = time.perf_counter()
            ranking = await engine.rerank(*workloads[i % len(workloads)])
            if i >= 2:
                ts.append((time.perf_counter() - t) * 1e3)
        flop = ranking.stats.usage.computed_tokens * FLOP_PER_TOKEN
        floor = flop / (matmul * 1e12) * 1e3
        rows.append(f"| {label} | {statistics.median(ts):.1f} | {floor:.1f} | {statistics.median(ts) / floor:.2f} |")
    return rows


async def main_async(a) -> None:
    loaded, _ = build_model(".cache/tiny-model")
    engine = Engine(EngineConfig(model="random-7b", warmup=True, preprocess_threads=8), loaded)
    await engine.start()
    gpu = torch.cuda.get_device_name()
    print(f"== RANDOM weights, Qwen2.5-VL-7B shape, {gpu}, torch {torch.__version__}", flush=True)
    rows = ["| what | variant | ms | ms without qkv/proj GEMMs |", "|---|---|---|---|"]
    for images in (25, 100):
        rows += window_layer(engine, images)
    print("\n".join(rows), flush=True)
    rows = ["| what | | off | on | |", "|---|---|---|---|---|"]
    for images in (25, 100):
        rows += tower_ab(engine, images, a.rounds)
    print("\n".join(rows), flush=True)
    matmul = matmul_tflops()
    rows = [f"bf16 8192^3 matmul {matmul:.0f} TFLOP/s", "| workload | p50 ms | floor ms | p50/floor |",
            "|---|---|---|---|"]
    rows += await end_to_end(engine, loaded.processor.tokenizer, a.rounds, matmul)
    print("\n".join(rows), flush=True)
    await engine.stop()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=6)
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("bench/vision_ab.py needs a CUDA GPU", file=sys.stderr)
        return 2
    if not vision_window_kernel.triton:
        print("triton is not installed", file=sys.stderr)
        return 2
    asyncio.run(main_async(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
