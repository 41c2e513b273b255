"""The vision tower's full-attention layers (4 of 32) on the GPU alone: images of one size as one
dense batch [images, 16 heads, patches, 80] through each SDPA backend this torch offers (the engine
prefers cuDNN's there), and flash varlen over the same rows packed; ms per call and TFLOP/s.
RANDOM inputs.

    python -m bench.kernels.vision_full_attention
"""

from __future__ import annotations

import functools
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.harness.timing import time_ms

SHAPES = (("100 x 448x448", 100, 1024), ("100 x 640x480", 100, 34 * 46), ("17 x 448x448 (Explain)", 17, 1024))
BACKENDS = (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
            ("efficient", SDPBackend.EFFICIENT_ATTENTION))


def _sdpa(backend: SDPBackend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    with sdpa_kernel(backend):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)


def main() -> int:
    heads, head_dim = 16, 80
    print("RANDOM inputs; the tower's full-attention layer's attention alone, bf16")
    for label, images, patches in SHAPES:
        q, k, v = (torch.randn(images, heads, patches, head_dim, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        flop = 4 * images * heads * patches * patches * head_dim
        outputs = {}
        for name, backend in BACKENDS:
            call = functools.partial(_sdpa, backend, q, k, v, head_dim**-0.5)
            try:
                outputs[name] = call()
                ms = min(time_ms(call, iters=20, warmup=3) for _ in range(3))
            except RuntimeError as exc:
                print(f"{label}: {name}: refused ({str(exc)[:80]})")
                continue
            print(f"{label}: {name} {ms:.3f} ms, {flop / ms / 1e9:.0f} TFLOP/s")
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:
            varlen_attn = None
        if varlen_attn is not None:
            packed = [t.transpose(1, 2).reshape(images * patches, heads, head_dim) for t in (q, k, v)]
            cu = torch.arange(0, (images + 1) * patches, patches, device="cuda", dtype=torch.int32)

            varlen = functools.partial(varlen_attn, *packed, cu, cu, patches, patches, scale=head_dim**-0.5)
            ms = min(time_ms(varlen, iters=20, warmup=3) for _ in range(3))
            print(f"{label}: flash varlen {ms:.3f} ms, {flop / ms / 1e9:.0f} TFLOP/s")
        if "cuDNN" in outputs and "flash" in outputs:
            print(f"{label}: cuDNN vs flash max diff {(outputs['cuDNN'] - outputs['flash']).abs().max().item():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
