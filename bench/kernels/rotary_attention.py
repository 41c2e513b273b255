"""The LM's queries rotated inside the attention kernel against the rope kernel then the kernel, on
a rerank's layouts (random inputs, the 7B's heads and a real rotary table): the GPU time of each
and whether the outputs are bit-identical.

    python -m bench.kernels.rotary_attention
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from bench.harness.timing import time_ms
from bench.kernels.lm_attention import D, layout, tensors
from lychee_grpc.engine.lm import attention_kernel as ak
from lychee_grpc.engine.util import rope_kernel


def rotary_table(rows: int, dev: str) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [rows, 1, D] in bfloat16 for positions 0..rows-1 at Qwen2's base (1e6)."""
    inv = 1.0 / (1e6 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    angles = torch.arange(rows, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat([angles, angles], dim=-1)[:, None, :]
    return emb.cos().to(dev, torch.bfloat16), emb.sin().to(dev, torch.bfloat16)


def case(name: str, prefix: int, lengths: list[int], dev: str) -> None:
    queries, keys, rows = layout(prefix, lengths, False)
    q, k, v, hp = tensors(queries, keys, rows, dev)
    cos, sin = rotary_table(rows, dev)
    flat, cu_q, cu_k = hp.flat.to(dev), hp.cu_q.to(dev), hp.cu_k.to(dev)
    max_q = int(hp.counts.max())

    def apart() -> torch.Tensor:
        return ak.packed_attention(rope_kernel.rope(q, cos, sin), k, v, flat, cu_q, cu_k, max_q, D**-0.5)

    def inside() -> torch.Tensor:
        return ak.packed_attention(q, k, v, flat, cu_q, cu_k, max_q, D**-0.5, rotary=(cos, sin))

    same = torch.equal(apart(), inside())
    a = min(time_ms(apart, iters=50) for _ in range(3))
    b = min(time_ms(inside, iters=50) for _ in range(3))
    print(f"{name:12s} {rows:6d} {a:20.4f} {b:22.4f} {b / a:6.3f}  {'bit-identical' if same else 'DIFFERENT'}")


def main() -> int:
    rng = np.random.default_rng(0)
    cases = {
        "T100": (74, [int(x) for x in rng.integers(48, 145, 100)]),
        "I100 batch": (70, [int(x) for x in rng.integers(290, 310, 50)]),
        "pair": (60, [40]),
        "hires25": (70, [int(x) for x in rng.integers(1050, 1090, 25)]),
    }
    print(f"RANDOM inputs, Qwen2.5-VL-7B heads; the kernel's tiles {ak.FULL_TILES}")
    print(f"{'case':12s} {'rows':>6s} {'rope + attention ms':>20s} {'rotating attention ms':>22s} "
          f"{'ratio':>6s}  bits")
    for name, (prefix, lengths) in cases.items():
        case(name, prefix, lengths, "cuda")
    return 0


if __name__ == "__main__":
    sys.exit(main())
