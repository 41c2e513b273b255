"""The rotary embeddings: the LM's at T100's and a pair's row counts, then the vision tower's q/k
(from its packed qkv projection) at I100's, 25 images' and one image's rows; the engine's Triton
kernels (util/rope_kernel.py) against the torch.compile kernels they replaced (token dimension
dynamic, as fused.Kernel compiled them) and eager torch. Per shape: how many outputs differ from eager's bits, the
GPU time of a call, and the host time of a call (launched back to back behind a long matmul, so
the GPU never waits and only the launching thread's cost shows). Random inputs, no model weights.

    python -m bench.kernels.rope
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch

from bench.harness.timing import time_ms
from bench.kernels.elementwise import dim0
from lychee_grpc.engine.lm.fused import rope, vision_qk_rope
from lychee_grpc.engine.util import rope_kernel

# (heads, rows): the 7B's queries and keys over T100's packed rows, then smaller batches.
SHAPES = ((28, 10889), (4, 10889), (28, 3000), (28, 40))
# Rows of the vision tower's full-attention layers (16 heads of 80): 100, 25 and 1 448x448 images.
VISION_ROWS = (102400, 25600, 1024)


def host_us(fn: Callable[[], object], big: torch.Tensor, iters: int = 100) -> float:
    for _ in range(20):
        big @ big  # ~30 ms of GPU work queued ahead
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    spent = (time.perf_counter() - start) / iters * 1e6
    torch.cuda.synchronize()
    return spent


def main() -> int:
    if not torch.cuda.is_available():
        print("python -m bench.kernels.rope needs a CUDA GPU", file=sys.stderr)
        return 2
    compiled_rope = dim0(rope)
    print(f"RANDOM inputs; {torch.cuda.get_device_name()}; the LM's RoPE (head_dim 128, bf16)")
    print("| heads | rows | kernel != eager | GPU us: kernel / compiled / eager "
          "| host us a call: kernel / compiled / eager |")
    print("|---|---|---|---|---|")
    g = torch.Generator(device="cuda").manual_seed(0)
    big = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)  # keeps the GPU busy ahead of host_us's calls
    for heads, rows in SHAPES:
        x = torch.randn(rows, heads * 128, generator=g, device="cuda").bfloat16().view(rows, heads, 128)
        angles = torch.rand(rows, 1, 128, generator=g, device="cuda") * 100
        cos, sin = angles.cos().bfloat16(), angles.sin().bfloat16()
        differ = int((rope_kernel.rope(x, cos, sin) != rope(x, cos, sin)).sum())
        fns = [lambda f=f, x=x, cos=cos, sin=sin: f(x, cos, sin) for f in (rope_kernel.rope, compiled_rope, rope)]
        gpu = " / ".join(f"{time_ms(f, iters=100, warmup=5) * 1e3:.1f}" for f in fns)
        host = " / ".join(f"{host_us(f, big):.1f}" for f in fns)
        print(f"| {heads} | {rows} | {differ} of {x.numel()} | {gpu} | {host} |")
    compiled_vision = dim0(vision_qk_rope)
    print("\nThe vision tower's q/k RoPE (16 heads of 80, bf16 from the packed qkv, float32 tables)")
    print("| rows | kernel != eager | compiled != eager | GPU us: kernel / compiled / eager "
          "| host us a call: kernel / compiled / eager |")
    print("|---|---|---|---|---|")
    for rows in VISION_ROWS:
        qkv = (torch.randn(rows, 3 * 16 * 80, generator=g, device="cuda") * 4).bfloat16()
        angles = torch.rand(rows, 80, generator=g, device="cuda") * 100
        cos, sin = angles.cos(), angles.sin()
        eager = torch.stack(vision_qk_rope(qkv, 16, cos, sin))
        differ = [int((torch.stack(f(qkv, 16, cos, sin)) != eager).sum())
                  for f in (rope_kernel.vision_qk_rope, compiled_vision)]
        fns = [lambda f=f, qkv=qkv, cos=cos, sin=sin: f(qkv, 16, cos, sin)
               for f in (rope_kernel.vision_qk_rope, compiled_vision, vision_qk_rope)]
        gpu = " / ".join(f"{time_ms(f, iters=50, warmup=5) * 1e3:.1f}" for f in fns)
        host = " / ".join(f"{host_us(f, big):.1f}" for f in fns)
        print(f"| {rows} | {differ[0]} of {eager.numel()} | {differ[1]} | {gpu} | {host} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
