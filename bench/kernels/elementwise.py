"""Elementwise kernels of the 7B shapes, compiled several ways, timed on the GPU (random inputs;
no model weights involved). Which compile settings make the fused kernels run near memory
bandwidth? Prints one table; bytes/time is the achieved bandwidth.

    python -m bench.kernels.elementwise
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from bench.harness.timing import time_ms
from lychee_grpc.engine.lm import fused


def dim0(fn):
    """Compiled with only the token dimension dynamic."""
    compiled = torch.compile(fn)

    def call(*args):
        for a in args:
            if isinstance(a, torch.Tensor) and a.dim() >= 2:
                torch._dynamo.maybe_mark_dynamic(a, 0)
        return compiled(*args)

    return call


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    # The residual add fused with the next norm (what the engine ran before bench/residual.py).
    x = x + delta
    return x, fused.rms_norm(x, weight, eps)


def vision_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    # transformers' apply_rotary_pos_emb_vision on q/k views: float32, cast back.
    c, s = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
    return tuple(fused.rope(t.float(), c, s).to(t.dtype) for t in (q, k))


def vision_qk_rope(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int):
    # q and k straight from the packed qkv projection; cos/sin halves are equal (cat(f, f)).
    n = qkv.shape[0]
    x = qkv.view(n, 3, heads, -1)[:, :2].float()
    half = x.shape[-1] // 2
    c = cos[:, None, None, :half].float()
    s = sin[:, None, None, :half].float()
    x1, x2 = x[..., :half], x[..., half:]
    out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(qkv.dtype)
    return out[:, 0], out[:, 1]


def main() -> int:
    dev, bf = "cuda", torch.bfloat16
    rows = []
    n_lm, n_vis = 10889, 102400

    def row(name, fn, nbytes):
        ms = time_ms(fn)
        rows.append((name, ms, nbytes / ms / 1e6))

    # LM shapes
    x = torch.randn(n_lm, 3584, device=dev, dtype=bf)
    d = torch.randn_like(x)
    w = torch.randn(3584, device=dev, dtype=bf)
    q = torch.randn(n_lm, 28 * 128, device=dev, dtype=bf).view(n_lm, 28, 128)
    cos = torch.randn(n_lm, 1, 128, device=dev, dtype=bf)
    sin = torch.randn(n_lm, 1, 128, device=dev, dtype=bf)
    g = torch.randn(n_lm, 18944, device=dev, dtype=bf)
    u = torch.randn_like(g)
    for label, wrap in (("eager", lambda f: f), ("dynamic=True", lambda f: torch.compile(f, dynamic=True)),
                        ("dim0", dim0)):
        ar, rp, sm = wrap(add_rms_norm), wrap(fused.rope), wrap(fused.silu_mul)
        row(f"LM add_rms_norm {label}", lambda ar=ar: ar(x, d, w, 1e-6), 4 * x.numel() * 2)
        row(f"LM rope q {label}", lambda rp=rp: rp(q, cos, sin), 2 * q.numel() * 2)
        row(f"LM silu_mul {label}", lambda sm=sm: sm(g, u), 3 * g.numel() * 2)

    # Vision shapes
    qkv = torch.randn(n_vis, 3 * 1280, device=dev, dtype=bf)
    vq, vk, _ = qkv.view(n_vis, 3, 16, 80).unbind(1)
    f = torch.randn(n_vis, 40, device=dev)
    vcos, vsin = torch.cat((f, f), -1).cos(), torch.cat((f, f), -1).sin()
    vx = torch.randn(n_vis, 1280, device=dev, dtype=bf)
    vd = torch.randn_like(vx)
    vw = torch.randn(1280, device=dev, dtype=bf)
    rope_bytes = 4 * vq.numel() * 2
    for label, wrap in (("eager", lambda f: f), ("dynamic=True", lambda f: torch.compile(f, dynamic=True)),
                        ("dim0", dim0)):
        vr, rn, ar = wrap(vision_rope), wrap(fused.rms_norm), wrap(add_rms_norm)
        row(f"ViT rope q,k views {label}", lambda vr=vr: vr(vq, vk, vcos, vsin), rope_bytes)
        row(f"ViT rms_norm {label}", lambda rn=rn: rn(vx, vw, 1e-6), 2 * vx.numel() * 2)
        row(f"ViT add + rms_norm {label}", lambda rn=rn: rn(vx + vd, vw, 1e-6), 5 * vx.numel() * 2)
        row(f"ViT add_rms_norm {label}", lambda ar=ar: ar(vx, vd, vw, 1e-6), 4 * vx.numel() * 2)
    qk = dim0(lambda a, c, s: vision_qk_rope(a, c, s, 16))
    row("ViT rope from qkv dim0", lambda: qk(qkv, vcos, vsin), rope_bytes)
    ref = vision_rope(vq, vk, vcos, vsin)
    got = qk(qkv, vcos, vsin)
    print("vision rope from qkv vs reference: max diff",
          max(float((a.float() - b.float()).abs().max()) for a, b in zip(ref, got)))

    # Patch embedding: Conv3d with stride = kernel vs the same weights as one GEMM.
    conv = torch.nn.Conv3d(3, 1280, kernel_size=(2, 14, 14), stride=(2, 14, 14), bias=False).to(dev, bf)
    pix = torch.randn(n_vis, 3 * 2 * 14 * 14, device=dev, dtype=bf)
    wflat = conv.weight.view(1280, -1)
    row("ViT patch embed conv3d", lambda: conv(pix.view(-1, 3, 2, 14, 14)), 0)
    row("ViT patch embed linear", lambda: F.linear(pix, wflat), 0)
    a = conv(pix.view(-1, 3, 2, 14, 14)).view(-1, 1280).float()
    b = F.linear(pix, wflat).float()
    print("patch embed linear vs conv3d: max diff", float((a - b).abs().max()), "max |x|", float(a.abs().max()))

    print(f"\n{'kernel':40s} {'ms':>8s} {'GB/s':>8s}")
    for name, ms, gbs in rows:
        print(f"{name:40s} {ms:8.3f} {gbs:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
