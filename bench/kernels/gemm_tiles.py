"""Which fixed tile the batch-invariant matmul (lychee_grpc/engine/util/gemm_kernel.py) should use
for each of the 7B's weight shapes: every candidate tile, loaded through pointers or through TMA
descriptors, timed against cuBLAS at each shape's row counts, with its rows checked for the same
bits at every row count. A tile may depend on the weight's shape (N, K), never on the batch's M,
so the choice is one tile per weight shape, the fastest summed over that shape's row counts.

    python -m bench.kernels.gemm_tiles              # prints the tables and the TILES to paste
    python -m bench.kernels.gemm_tiles --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from .invariant import ROWS, SHAPES, bench_ms

# (label, overrides of gemm_kernel.CONFIG)
CANDIDATES: tuple[tuple[str, dict[str, int]], ...] = tuple(
    (f"{'tma' if tma else 'ptr'} {bm}x{bn}x{bk} s{st} w{wp}",
     {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_stages": st, "num_warps": wp, "TMA": tma})
    for tma in (0, 1)
    for bm, bn, bk, st, wp in (
        (128, 256, 64, 3, 8), (128, 256, 64, 4, 8), (128, 128, 64, 4, 8), (128, 128, 64, 4, 4),
        (128, 128, 128, 3, 8), (64, 256, 64, 4, 8), (128, 64, 64, 4, 4),
    )
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kernels.gemm_tiles", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write every timing here")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("python -m bench.kernels.gemm_tiles needs a CUDA GPU", file=sys.stderr)
        return 2
    from lychee_grpc.engine.util import gemm_kernel

    print(f"== {torch.cuda.get_device_name()}: fixed tiles for the batch-invariant matmul; random bf16 inputs "
          f"(timings only: no model weights)", flush=True)
    torch.manual_seed(0)
    dev = "cuda"
    record: list[dict[str, object]] = []
    chosen: dict[tuple[int, int], dict[str, int]] = {}
    totals = {"cublas": 0.0, "base": 0.0, "chosen": 0.0}
    for name, n, k in SHAPES:
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5
        bias = torch.randn(n, device=dev, dtype=torch.bfloat16) if name.startswith(("ViT qkv", "merger")) else None
        rows = ROWS[name.split()[0]]
        xs = {m: torch.randn(m, k, device=dev, dtype=torch.bfloat16) for m in rows}
        cublas = {m: bench_ms(lambda x=xs[m], w=w, bias=bias: F.linear(x, w, bias)) for m in rows}
        times: dict[str, dict[int, float]] = {}
        print(f"\n### {name} (N={n}, K={k}); cuBLAS ms at M={list(rows)}: "
              + ", ".join(f"{cublas[m]:.3f}" for m in rows), flush=True)
        print("| tile | " + " | ".join(f"M={m} ms (x cuBLAS)" for m in rows) + " | rows same | rel. err |")
        print("|---|" + "---|" * len(rows) + "---|---|")
        for label, cfg in CANDIDATES:
            try:
                big = xs[rows[-1]]
                full = gemm_kernel.linear(big, w, bias, cfg)
                same = all(torch.equal(gemm_kernel.linear(big[:r].clone(), w, bias, cfg), full[:r])
                           for r in (1, 7, big.shape[0] // 2))
                ref = F.linear(big.float(), w.float(), bias.float() if bias is not None else None)
                err = ((full.float() - ref).norm() / ref.norm()).item()
                times[label] = {
                    m: bench_ms(lambda x=xs[m], w=w, bias=bias, cfg=cfg: gemm_kernel.linear(x, w, bias, cfg))
                    for m in rows
                }
            except Exception as e:  # a tile that does not compile or fit: reported, not chosen
                print(f"| {label} | failed: {type(e).__name__}: {str(e)[:120]} |", flush=True)
                continue
            if not same or err > 5e-3:
                print(f"| {label} | rejected: rows same {same}, rel. err {err:.1e} |", flush=True)
                del times[label]
                continue
            cells = " | ".join(f"{times[label][m]:.3f} ({times[label][m] / cublas[m]:.2f})" for m in rows)
            print(f"| {label} | {cells}"
                  + f" | {same} | {err:.1e} |", flush=True)
            record.append({"shape": name, "N": n, "K": k, "tile": label, "config": cfg,
                           "ms": times[label], "cublas_ms": cublas})
        base = CANDIDATES[0][0]
        best = min(times, key=lambda t: sum(times[t].values()))
        chosen[(n, k)] = dict(CANDIDATES)[best]
        totals["cublas"] += sum(cublas.values())
        totals["base"] += sum(times[base].values()) if base in times else float("nan")
        totals["chosen"] += sum(times[best].values())
        print(f"chosen for N={n}, K={k}: {best} ({sum(times[best].values()):.3f} ms over the rows; "
              f"base {sum(times[base].values()) if base in times else float('nan'):.3f}; "
              f"cuBLAS {sum(cublas.values()):.3f})", flush=True)
    print(f"\nsum over every shape and row count: cuBLAS {totals['cublas']:.2f} ms, "
          f"base tile {totals['base']:.2f} ms ({totals['base'] / totals['cublas']:.2f}x), "
          f"chosen tiles {totals['chosen']:.2f} ms ({totals['chosen'] / totals['cublas']:.2f}x)")
    print("TILES = {")
    for (n, k), cfg in chosen.items():
        diff = {key: v for key, v in cfg.items() if gemm_kernel.CONFIG.get(key) != v}
        print(f"    ({n}, {k}): {diff},")
    print("}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"records": record, "chosen": {f"{n}x{k}": c for (n, k), c in chosen.items()},
                       "totals_ms": totals}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
