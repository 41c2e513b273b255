"""How close T100's GEMMs can come to the matmul floor on this GPU (random inputs, the 7B's LM
shapes at T100's 10,889 rows):

1. each shape as F.linear runs it (cuBLAS's own choice of algorithm), in TFLOP/s;
2. one GEMM's rate at row counts around T100's (tile and wave quantisation);
3. T100's whole GEMM sequence (27 full layers, the last layer's keys and values) back to back, the
   time no exact bf16 pass of T100 goes under with these GEMMs, against the floor;
4. the same shapes after PyTorch's TunableOp has tried cuBLASLt's other algorithms for each exact
   shape (where this torch has it): what a better pick could give.

    python -m bench.kernels.gemm_headroom
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from bench.harness.floor import FLOP_PER_TOKEN, matmul_tflops
from bench.harness.timing import time_ms

ROWS = 10889  # T100's tokens
HIDDEN, KV, INTER, LAYERS = 3584, 512, 18944, 28
# (name, in, out, bias) per layer, in the executor's order.
LAYER = [("q", HIDDEN, HIDDEN, True), ("k", HIDDEN, KV, True), ("v", HIDDEN, KV, True), ("o", HIDDEN, HIDDEN, False),
         ("gate", HIDDEN, INTER, False), ("up", HIDDEN, INTER, False), ("down", INTER, HIDDEN, False)]


def weights(dev: str) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    out = {}
    for name, k, n, bias in LAYER:
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5
        out[name] = (w, torch.randn(n, device=dev, dtype=torch.bfloat16) if bias else None)
    return out


def shape_table(label: str, w: dict, xs: dict) -> dict[str, float]:
    ms = {}
    for name, k, n, _ in LAYER:
        wt, b = w[name]
        ms[name] = min(time_ms(lambda wt=wt, b=b, x=xs[k]: F.linear(x, wt, b), iters=20) for _ in range(3))
        print(f"  {label:10s} {name:5s} {ROWS}x{k}x{n}: {ms[name]:7.3f} ms, "
              f"{2 * ROWS * k * n / ms[name] / 1e9:6.1f} TFLOP/s")
    return ms


def sequence_ms(w: dict, xs: dict) -> float:
    """T100's GEMMs in order: 27 full layers, then the last layer's k and v over every row."""
    def run() -> None:
        for _ in range(LAYERS - 1):
            for name, k, _, _ in LAYER:
                F.linear(xs[k], *w[name])
        for name in ("k", "v"):
            F.linear(xs[HIDDEN], *w[name])
    return min(time_ms(run, iters=3, warmup=1) for _ in range(4))


def main() -> int:
    dev = "cuda"
    burst = matmul_tflops()
    floor = ROWS * FLOP_PER_TOKEN / (burst * 1e12) * 1e3
    print(f"RANDOM inputs, Qwen2.5-VL-7B LM shapes; bf16 8192^3 burst {burst:.1f} TFLOP/s; "
          f"T100 floor {floor:.1f} ms ({ROWS} rows)")
    w = weights(dev)
    xs = {k: torch.randn(ROWS, k, device=dev, dtype=torch.bfloat16) for k in (HIDDEN, INTER)}
    print("1. each shape, cuBLAS's pick:")
    shape_table("default", w, xs)
    print("2. gate's shape at rows around T100's:")
    wg = w["gate"][0]
    for rows in (10240, 10368, 10496, 10624, 10752, 10880, 10889, 10944, 11008, 11136, 11264, 12288, 15360):
        x = torch.randn(rows, HIDDEN, device=dev, dtype=torch.bfloat16)
        ms = min(time_ms(lambda x=x: F.linear(x, wg), iters=20) for _ in range(3))
        print(f"  rows {rows:6d}: {ms:7.3f} ms, {2 * rows * HIDDEN * INTER / ms / 1e9:6.1f} TFLOP/s")
    seq = sequence_ms(w, xs)
    print(f"3. T100's GEMM sequence back to back: {seq:.1f} ms = {seq / floor:.3f}x the floor")
    tunable = getattr(torch.cuda, "tunable", None)
    if tunable is None:
        print("4. TunableOp: not in this torch")
        return 0
    try:
        tunable.enable(True)
        tunable.tuning_enable(True)
        tunable.set_max_tuning_duration(200)
        tunable.set_filename("/tmp/gemm_headroom_tunableop.csv")
        for name, k, _, _ in LAYER:
            F.linear(xs[k], *w[name])  # tuned on first sight
        torch.cuda.synchronize()
        tunable.tuning_enable(False)
        print(f"4. after TunableOp (torch {torch.__version__}; results {len(tunable.get_results())} entries):")
        shape_table("tuned", w, xs)
        tuned = sequence_ms(w, xs)
        print(f"   T100's GEMM sequence, tuned: {tuned:.1f} ms = {tuned / floor:.3f}x the floor "
              f"({tuned / seq:.3f} of cuBLAS's pick)")
        for row in tunable.get_results():
            print("   ", row)
    except Exception as exc:  # a torch without CUDA TunableOp support
        print(f"4. TunableOp did not run here: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
