"""The elementwise kernels between the GEMMs at the LM's and the vision tower's widths: the
engine's hand-written Triton kernels (util/row_kernels.py for RMSNorm and add + RMSNorm,
util/silu_kernel.py for SiLU*up) against the torch.compile kernels they replaced (token dimension
dynamic, as fused.Kernel compiles them) and eager torch; plus the tower's gate/up GEMMs apart
against one GEMM over their concatenated weights. Random inputs, no model weights involved.
Prints one table; GB/s is the bytes each kernel must move over its time.

    python -m bench.kernels.norms
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.harness.timing import time_ms
from lychee_grpc.engine.lm import fused
from lychee_grpc.engine.util import row_kernels, silu_kernel

Row = tuple[str, float, float]


def timed(rows: list[Row], name: str, fn: Callable[[], object], nbytes: int) -> None:
    ms = time_ms(fn, iters=30, warmup=5)
    rows.append((name, ms, nbytes / ms / 1e6))


def shape(rows: list[Row], label: str, m: int, hidden: int, inter: int) -> None:
    dev, bf = "cuda", torch.bfloat16
    norm, add_norm = fused.Kernel(fused.rms_norm, True), fused.Kernel(fused.add_rms_norm, True)
    silu = fused.Kernel(fused.silu_mul, True)
    x = torch.randn(m, hidden, device=dev, dtype=bf)
    d = torch.randn_like(x)
    w = torch.randn(hidden, device=dev, dtype=bf)
    nb = x.numel() * 2
    timed(rows, f"{label} rms_norm compiled", lambda: norm(x, w, 1e-6), 2 * nb)
    timed(rows, f"{label} rms_norm row kernel", lambda: row_kernels.rms_norm(x, w, 1e-6), 2 * nb)
    timed(rows, f"{label} add, then rms_norm compiled", lambda: norm(x + d, w, 1e-6), 5 * nb)
    timed(rows, f"{label} add_rms_norm compiled", lambda: add_norm(x, d, w, 1e-6), 4 * nb)
    timed(rows, f"{label} add_rms_norm row kernel", lambda: row_kernels.add_rms_norm(x, d, w, 1e-6), 4 * nb)
    a = add_norm(x, d, w, 1e-6)[1].float()
    b = row_kernels.add_rms_norm(x, d, w, 1e-6)[1].float()
    print(f"{label}: add_rms_norm row kernel vs compiled, max diff {float((a - b).abs().max()):.3g}")
    g = torch.randn(m, inter, device=dev, dtype=bf)
    u = torch.randn_like(g)
    nb = g.numel() * 2
    timed(rows, f"{label} silu_mul compiled", lambda: silu(g, u), 3 * nb)
    timed(rows, f"{label} silu_mul eager", lambda: F.silu(g) * u, 5 * nb)
    timed(rows, f"{label} silu_mul triton", lambda: silu_kernel.silu_mul(g, u), 3 * nb)
    same = torch.equal(silu_kernel.silu_mul(g, u), F.silu(g) * u)
    print(f"{label}: silu_mul triton bit for bit the eager result: {same}")
    if label.startswith("ViT"):
        wg = torch.randn(inter, hidden, device=dev, dtype=bf) / hidden**0.5
        wu = torch.randn_like(wg)
        bg, bu = torch.randn(inter, device=dev, dtype=bf), torch.randn(inter, device=dev, dtype=bf)
        wcat, bcat = torch.cat([wg, wu]), torch.cat([bg, bu])
        timed(rows, f"{label} gate, up GEMMs", lambda: (F.linear(x, wg, bg), F.linear(x, wu, bu)), 0)
        timed(rows, f"{label} gate|up one GEMM", lambda: F.linear(x, wcat, bcat).chunk(2, dim=-1), 0)


def main() -> int:
    rows: list[Row] = []
    for label, m, hidden, inter in (("ViT 100 img", 102400, 1280, 3424), ("ViT 1 img", 1024, 1280, 3424),
                                    ("LM T100", 10889, 3584, 18944), ("LM I100", 15360, 3584, 18944)):
        shape(rows, label, m, hidden, inter)
    print("RANDOM inputs; the engine's kernels against the compiled ones they replaced")
    print(f"\n{'kernel':44s} {'ms':>8s} {'GB/s':>8s}")
    for name, ms, gbs in rows:
        print(f"{name:44s} {ms:8.3f} {gbs:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
