"""Gate and up projections and SiLU(gate) * up as ONE Triton kernel (util/swiglu_kernel.py)
against what the engine ran before it: cuBLAS for gate, cuBLAS for up, then util/silu_kernel.py.
Timed at the vision tower's shapes (1, 25 and 100 448x448 images) and the LM's (1,024 rows to
T100), over a sweep of tiles. Random inputs; RANDOM weights.

    python -m bench.kernels.swiglu_gemm
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from bench.harness.timing import time_ms
from lychee_grpc.engine.util import silu_kernel
from lychee_grpc.engine.util.swiglu_kernel import CONFIG, gate_up_silu

# (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps[, GROUP_M, FLATTEN, WS]): two float32 accumulators of
# BLOCK_M x BLOCK_N each; FLATTEN and WS are Triton's flattened tile loop and warp specialisation.
CONFIGS = ((128, 128, 64, 3, 8), (128, 128, 64, 4, 8), (128, 128, 32, 4, 8), (128, 128, 64, 2, 8),
           (128, 64, 64, 4, 4), (128, 64, 64, 5, 8), (64, 128, 64, 4, 4), (256, 64, 64, 3, 8),
           (128, 128, 64, 3, 8, 8, True), (128, 128, 64, 3, 8, 8, False, True),
           (128, 128, 64, 3, 8, 8, True, True), (128, 128, 64, 4, 8, 8, True, True))
KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_stages", "num_warps", "GROUP_M", "FLATTEN", "WS")


def swiglu(x, wg, wu, bg, bu, *cfg):
    """The fused kernel with a tile given positionally (CONFIGS' layout)."""
    return gate_up_silu(x, wg, wu, bg, bu, config=dict(zip(KEYS, cfg)))


def compare(label: str, m: int, k: int, n: int, bias: bool, configs=CONFIGS) -> None:
    dev, bf = "cuda", torch.bfloat16
    x = torch.randn(m, k, device=dev, dtype=bf)
    wg = torch.randn(n, k, device=dev, dtype=bf) / k**0.5
    wu = torch.randn(n, k, device=dev, dtype=bf) / k**0.5
    bg = torch.randn(n, device=dev, dtype=bf) if bias else None
    bu = torch.randn(n, device=dev, dtype=bf) if bias else None

    def engine():
        return silu_kernel.silu_mul(F.linear(x, wg, bg), F.linear(x, wu, bu))

    want = engine()
    base = time_ms(engine, iters=20, warmup=3)
    gemms = time_ms(lambda: (F.linear(x, wg, bg), F.linear(x, wu, bu)), iters=20, warmup=3)
    print(f"{label} (M={m}): engine {base:.3f} ms (cuBLAS x2 {gemms:.3f}, {4 * m * k * n / gemms / 1e9:.0f} TFLOP/s)")
    for cfg in configs:
        try:
            got = swiglu(x, wg, wu, bg, bu, *cfg)
            ms = time_ms(lambda cfg=cfg: swiglu(x, wg, wu, bg, bu, *cfg), iters=20, warmup=3)
            diff = float((got.float() - want.float()).abs().max())
            print(f"  fused {cfg}: {ms:.3f} ms = {base / ms:.2f}x the engine's, max diff {diff:.3g}")
        except Exception as exc:  # a config that does not fit is a result too
            print(f"  fused {cfg}: failed ({type(exc).__name__}: {str(exc)[:120]})")


def main() -> int:
    print("RANDOM inputs and weights; fused gate/up + SiLU*up against cuBLAS x2 + the SiLU kernel")
    compare("ViT gate/up, 100 images", 102400, 1280, 3424, True)
    compare("LM gate/up, T100", 10889, 3584, 18944, False)
    # The default tile across batch sizes: where the engine should switch to it.
    default = (tuple(CONFIG[key] for key in KEYS[:6]),)
    for m in (1024, 25600):
        compare("ViT gate/up", m, 1280, 3424, True, default)
    for m in (256, 1024, 2048, 4096):
        compare("LM gate/up", m, 3584, 18944, False, default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
