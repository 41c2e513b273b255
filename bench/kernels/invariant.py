"""The batch-invariant mode's kernels at the 7B's shapes (random bf16 inputs): how fast the
fixed-tile Triton matmul runs against cuBLAS (F.linear), whether its rows have the same bits at
every row count (and cuBLAS's do not), its error against float32, and the row kernels' time
against the compiled elementwise ones.

    python -m bench.kernels.invariant
    python -m bench.kernels.invariant --config BLOCK_N=128,num_stages=4   # another fixed tile
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

# (name, N, K): nn.Linear's [out, in]; M is the rows of a batch.
SHAPES = (
    ("LM q/o", 3584, 3584), ("LM k/v", 512, 3584), ("LM gate/up", 18944, 3584), ("LM down", 3584, 18944),
    ("ViT qkv", 3840, 1280), ("ViT proj", 1280, 1280), ("ViT gate/up", 3424, 1280), ("ViT down", 1280, 3424),
    ("merger 1", 5120, 5120), ("merger 2", 3584, 5120),
)
ROWS = {"LM": (150, 2048, 10889), "ViT": (1024, 25600), "merger": (256, 6400)}


def bench_ms(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kernels.invariant", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="", help="override gemm_kernel.CONFIG: key=value,...")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("python -m bench.kernels.invariant needs a CUDA GPU", file=sys.stderr)
        return 2
    from lychee_grpc.engine.lm.fused import FusedOps
    from lychee_grpc.engine.util import gemm_kernel, row_kernels

    for item in filter(None, a.config.split(",")):
        key, _, value = item.partition("=")
        gemm_kernel.CONFIG[key] = int(value)
    print(f"== {torch.cuda.get_device_name()}: fixed tile {gemm_kernel.CONFIG}; random bf16 inputs", flush=True)
    torch.manual_seed(0)
    dev = "cuda"
    print("| GEMM | M | cuBLAS ms | TFLOP/s | invariant ms | TFLOP/s | ratio | rows same at M=1,7,M/2 | "
          "cuBLAS rows same | rel. err vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    total = {"cublas": 0.0, "triton": 0.0}
    for name, n, k in SHAPES:
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5
        bias = torch.randn(n, device=dev, dtype=torch.bfloat16) if name.startswith(("ViT qkv", "merger")) else None
        for m in ROWS[name.split()[0]]:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            ours = gemm_kernel.linear(x, w, bias)
            ref = F.linear(x, w, bias)
            exact = x.float() @ w.float().T + (bias.float() if bias is not None else 0)
            err = ((ours.float() - exact).norm() / exact.norm()).item()
            same = all(torch.equal(gemm_kernel.linear(x[:r].clone(), w, bias), ours[:r]) for r in (1, 7, m // 2))
            cublas_same = all(torch.equal(F.linear(x[:r].clone(), w, bias), ref[:r]) for r in (1, 7, m // 2))
            t_c = bench_ms(lambda x=x, w=w, bias=bias: F.linear(x, w, bias))
            t_t = bench_ms(lambda x=x, w=w, bias=bias: gemm_kernel.linear(x, w, bias))
            flop = 2 * m * n * k
            total["cublas"] += t_c
            total["triton"] += t_t
            print(f"| {name} | {m} | {t_c:.3f} | {flop / t_c / 1e9:.0f} | {t_t:.3f} | {flop / t_t / 1e9:.0f} | "
                  f"{t_t / t_c:.2f} | {same} | {cublas_same} | {err:.1e} |", flush=True)
    print(f"sum over the rows above: cuBLAS {total['cublas']:.2f} ms, invariant {total['triton']:.2f} ms "
          f"({total['triton'] / total['cublas']:.2f}x)")

    ops = FusedOps(torch.device(dev))
    print("\n| row kernel | rows x width | compiled ms | invariant ms | rows same |")
    print("|---|---|---|---|---|")
    for rows, width in ((10889, 3584), (102400, 1280), (1, 3584)):
        x = torch.randn(rows, width, device=dev, dtype=torch.bfloat16)
        d = torch.randn_like(x)
        w = torch.randn(width, device=dev, dtype=torch.bfloat16)
        t_c = bench_ms(lambda x=x, d=d, w=w: ops.add_rms_norm(x, d, w, 1e-6))
        t_i = bench_ms(lambda x=x, d=d, w=w: row_kernels.add_rms_norm(x, d, w, 1e-6))
        full = row_kernels.add_rms_norm(x, d, w, 1e-6)[1]
        same = torch.equal(row_kernels.add_rms_norm(x[:1].clone(), d[:1].clone(), w, 1e-6)[1], full[:1])
        print(f"| add_rms_norm | {rows} x {width} | {t_c:.3f} | {t_i:.3f} | {same} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
