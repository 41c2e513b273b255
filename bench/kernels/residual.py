"""Residual adds folded into the GEMM that produces them (cuBLAS beta = 1: x += h @ W^T in the
GEMM's epilogue), against a separate add kernel, at the model's shapes (random inputs). Also how
the bf16 matmul rate holds up over a sustained stretch of GEMMs, as inside a 250 ms forward,
against the short burst the benchmark's floor uses.

    python -m bench.kernels.residual

(The vision tower A/B of folded vs separate residual adds, `--tower`, is in commit 46a9890; the
folding measured no faster there and was not kept.)
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from bench.harness.timing import time_ms
from lychee_grpc.engine.lm.fused import FusedOps


def sustained(seconds: float = 1.0) -> None:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    flop = 2 * 8192**3
    torch.cuda.synchronize()
    time.sleep(2.0)  # let the clocks settle back after whatever ran before
    events = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(10):
            a @ b
        e1.record()
        events.append((e0, e1))
        if len(events) > 4:
            events[-5][1].synchronize()  # stay a few steps ahead, never unbounded
    torch.cuda.synchronize()
    rates = [10 * flop / (e0.elapsed_time(e1) * 1e-3) / 1e12 for e0, e1 in events]
    elapsed = 0.0
    marks = []
    for (e0, e1), r in zip(events, rates):
        elapsed += e0.elapsed_time(e1)
        marks.append((elapsed, r))
    for upto in (15, 50, 100, 250, 500, 1000):
        window = [r for t, r in marks if t <= upto]
        if window:
            print(f"  first {upto:5d} ms of GEMMs: {sum(window) / len(window):6.0f} TFLOP/s "
                  f"(last step {window[-1]:.0f})")


def measure(ops: FusedOps, name: str, m: int, k: int, n: int, bias: bool) -> None:
    dev, bf = "cuda", torch.bfloat16
    h = torch.randn(m, k, device=dev, dtype=bf)
    w = torch.randn(n, k, device=dev, dtype=bf) / k**0.5
    b = torch.randn(n, device=dev, dtype=bf) if bias else None
    x0 = torch.randn(m, n, device=dev, dtype=bf)
    nw = torch.randn(n, device=dev, dtype=bf)
    x = x0.clone()
    wt = w.t()
    t_sep = time_ms(lambda: x + F.linear(h, w, b))
    t_fold = time_ms(lambda: x.addmm_(h, wt))
    t_plain = time_ms(lambda: F.linear(h, w, b))
    t_sep_n = time_ms(lambda: ops.add_rms_norm(x, F.linear(h, w, b), nw, 1e-6))
    t_fold_n = time_ms(lambda: ops.rms_norm(x.addmm_(h, wt), nw, 1e-6))
    ref = x0.float() + h.float() @ w.float().t()
    diff = (x0.clone().addmm_(h, wt).float() - ref).abs().max().item()
    print(f"{name:10s} {m:6d} {k:6d} {n:5d} {t_sep:10.3f} {t_fold:8.3f} {t_plain:8.3f} {t_sep_n:12.3f} "
          f"{t_fold_n:11.3f} {diff:9.2e}")


def main() -> int:
    ops = FusedOps(torch.device("cuda"))
    print(f"GPU: {torch.cuda.get_device_name()}; random inputs")
    print("sustained 8192^3 bf16 matmul:")
    sustained()
    shapes = [("ViT proj", 25600, 1280, 1280, True), ("ViT down", 25600, 3424, 1280, True),
              ("ViT proj", 102400, 1280, 1280, True), ("ViT down", 102400, 3424, 1280, True),
              ("LM o_proj", 10889, 3584, 3584, False), ("LM down", 10889, 18944, 3584, False)]
    print(f"{'GEMM':10s} {'M':>6s} {'K':>6s} {'N':>5s} {'linear+add':>10s} {'addmm_':>8s} {'linear':>8s} "
          f"{'lin+add+norm':>12s} {'addmm_+norm':>11s} {'max diff':>9s}")
    for shape in shapes:
        measure(ops, *shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
