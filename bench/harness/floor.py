"""The floor a workload is measured against: the FLOPs it needs at the GPU's measured bf16
matmul rate."""

from __future__ import annotations

import statistics
import time

import torch

from .timing import pct, sync

FLOP_PER_TOKEN = 2 * 6.53e9  # the 7B's LM: 2 x parameters per token
VISION_FLOP_448 = 1.37e12  # the vision tower on one 448x448 image
# Per 14-px patch at that rate (1,024 patches at 448x448); for other sizes this leaves out only the
# full-attention layers' growth with the square of the patch count (4 of 32 layers, small).
VISION_FLOP_PER_PATCH = VISION_FLOP_448 / 1024


def image_patches(processor, width: int, height: int) -> int:
    """14-px patches of a width x height image after the processor's resize (its pixel bounds)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    ip = processor.image_processor
    size = getattr(ip, "size", {}) or {}
    h, w = smart_resize(height, width, factor=28, min_pixels=size.get("shortest_edge", 4 * 28 * 28),
                        max_pixels=size.get("longest_edge", 1280 * 28 * 28))
    return (h // 14) * (w // 14)


def matmul_tflops() -> float:
    """bf16 8192^3 matmuls per second on this GPU, in TFLOP/s (a short burst)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    return 2 * 8192**3 * 10 / (time.perf_counter() - start) / 1e12


def summary(name: str, times_ms: list[float], needed_flop: float, matmul: float, extra: dict | None = None,
            log=print) -> dict:
    """p50/p95 against the floor (`needed_flop` at `matmul` TFLOP/s), peak memory, and `extra`."""
    p50 = statistics.median(times_ms)
    floor = needed_flop / (matmul * 1e12) * 1e3
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    out = {"p50_ms": round(p50, 1), "p95_ms": round(pct(times_ms, 0.95), 1), "floor_ms": round(floor, 1),
           "candidates_per_s": round(100 / (p50 / 1e3), 1), "peak_gib": round(peak, 2),
           "needed_tflops": round(needed_flop / (p50 / 1e3) / 1e12, 1), "iterations": len(times_ms)}
    out.update(extra or {})
    log(f"  {name}: p50 {out['p50_ms']} ms, p95 {out['p95_ms']} ms, floor {out['floor_ms']} ms "
        f"({p50 / floor:.2f}x), peak {out['peak_gib']} GiB")
    return out
