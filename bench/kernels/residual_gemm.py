"""A layer's projection added to the residual stream: F.linear then the add + RMSNorm row kernel
(the two steps), against the GEMM adding x itself (`x.addmm_`, beta = 1) then the RMSNorm row
kernel, at the LM's o_proj and down_proj shapes (random inputs, 7B widths): GPU time per call and
each one's largest error against float32.

    python -m bench.kernels.residual_gemm
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from bench.harness.timing import time_ms
from lychee_grpc.engine.lm.fused import FusedOps

HIDDEN, INTER = 3584, 18944


def case(ops: FusedOps, name: str, rows: int, k: int) -> None:
    dev, bf = "cuda", torch.bfloat16
    g = torch.Generator(device="cpu").manual_seed(0)
    x0 = torch.randn(rows, HIDDEN, generator=g).to(dev, bf)
    a = torch.randn(rows, k, generator=g).to(dev, bf)
    w = (torch.randn(HIDDEN, k, generator=g) / k**0.5).to(dev, bf)
    norm_w = (torch.rand(HIDDEN, generator=g) + 0.5).to(dev, bf)
    eps = 1e-6
    want = x0.float() + a.float() @ w.float().t()
    two_x, _ = ops.add_rms_norm(x0, F.linear(a, w), norm_w, eps)
    one_x = x0.clone().addmm_(a, w.t())
    err_two = (two_x.float() - want).abs().max().item()
    err_one = (one_x.float() - want).abs().max().item()
    x = x0.clone()

    def two_steps() -> None:
        ops.add_rms_norm(x, F.linear(a, w), norm_w, eps)

    def one_gemm() -> None:
        ops.rms_norm(x.addmm_(a, w.t()), norm_w, eps)

    t2 = min(time_ms(two_steps, iters=30) for _ in range(3))
    t1 = min(time_ms(one_gemm, iters=30) for _ in range(3))
    print(f"{name:8s} {rows:6d}x{k:<6d} {t2:10.4f} {t1:10.4f} {t1 / t2:7.3f} {err_two:10.4f} {err_one:10.4f}")


def main() -> int:
    ops = FusedOps(torch.device("cuda"))
    print("RANDOM inputs, Qwen2.5-VL-7B LM widths; ms per call (CUDA events, best of 3 x 30)")
    print(f"{'shape':8s} {'rows x K':13s} {'two steps':>10s} {'one GEMM':>10s} {'ratio':>7s} "
          f"{'err two':>10s} {'err one':>10s}")
    for rows in (10889, 15083, 100):
        case(ops, "o_proj", rows, HIDDEN)
        case(ops, "down", rows, INTER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
