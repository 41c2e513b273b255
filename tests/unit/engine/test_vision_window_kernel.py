"""The fused rotary + window attention kernel computes what transformers' rotary embedding followed
by per-window attention computes.

The kernel is Triton, built for CUDA; here it runs under Triton's interpreter (TRITON_INTERPRET=1,
NumPy on the CPU), which must be set before the kernel is defined, so each check runs in a fresh
interpreter process. The GPU benchmark checks the compiled kernel in bf16 (bench/window_kernel.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lychee_grpc.engine.vision import window_kernel as vision_window_kernel

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(vision_window_kernel.triton is None, reason="triton is not installed")


def run_interpreted(code: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


KERNEL_VS_REFERENCE = """
    import json, torch
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
    from lychee_grpc.engine.vision.window_kernel import window_attention_rope
    torch.manual_seed(0)
    heads, head_dim = 16, 80
    lengths = [64, 48, 8, 1, 64, 33, 16]
    n = sum(lengths)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    out = {}
    for name in ("float32", "float16"):
        dtype = getattr(torch, name)
        qkv = torch.randn(n, 3 * heads * head_dim).to(dtype)
        cos, sin = torch.randn(n, head_dim), torch.randn(n, head_dim)
        got = window_attention_rope(qkv, cos, sin, cu, len(lengths), heads, head_dim**-0.5).float()
        q, k, v = qkv.view(n, 3, heads, head_dim).unbind(1)
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)  # float32 arithmetic, rounded to dtype
        want = torch.empty(n, heads, head_dim)
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
            o = torch.nn.functional.scaled_dot_product_attention(
                *(t[a:b].transpose(0, 1).float() for t in (q, k, v)), scale=head_dim**-0.5)
            want[a:b] = o.transpose(0, 1)
        out[name] = (got - want.reshape(n, -1)).abs().max().item()
        out[name + "_finite"] = bool(torch.isfinite(got).all())
    print(json.dumps(out))
"""


def test_window_kernel_equals_rotary_then_attention_per_window():
    diffs = run_interpreted(KERNEL_VS_REFERENCE)
    assert diffs["float32_finite"] and diffs["float16_finite"]
    assert diffs["float32"] < 1e-4, diffs
    assert diffs["float16"] < 1e-2, diffs  # products of half-precision inputs, as on the GPU


TOWER_WITH_AND_WITHOUT_KERNEL = """
    import json, math, torch, transformers
    from transformers.vision_utils import get_vision_cu_seqlens, get_vision_window_index
    from lychee_grpc.engine.vision import window_kernel as vision_window_kernel
    from lychee_grpc.engine.vision.tower import VisionTower

    config = transformers.Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=160, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[1]),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=128, bos_token_id=0, eos_token_id=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}))
    torch.manual_seed(0)
    model = transformers.Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation="sdpa",
                                                                         dtype=torch.float32).eval()
    with torch.no_grad():
        for module in model.model.visual.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv3d)):
                module.weight.normal_(0.0, 1.0 / math.sqrt(module.weight[0].numel()))
    visual = model.model.visual
    calls = []
    real = vision_window_kernel.window_attention_rope
    def counted(*args):
        calls.append(args[4])
        return real(*args)
    vision_window_kernel.window_attention_rope = counted
    vision_window_kernel.supported = lambda qkv, heads, max_len: max_len <= vision_window_kernel.MAX_WINDOW
    grids = [(1, 16, 16), (1, 10, 22), (1, 6, 8)]  # windows of 64, 48, 32, 24 and 16 patches
    pixels = torch.randn(sum(t * h * w for t, h, w in grids), 3 * 2 * 14 * 14)
    with torch.inference_mode():
        fused = VisionTower(visual, window_kernel=True)(pixels, grids)
        kernel_calls = list(calls)
        plain = VisionTower(visual, window_kernel=False)(pixels, grids)
        hf = visual(pixels, grid_thw=torch.tensor(grids))  # transformers' tower, SDPA windows
        hf = getattr(hf, "pooler_output", hf)
    print(json.dumps({"kernel_calls": len(kernel_calls), "windows": kernel_calls,
                      "fused_vs_plain": (fused - plain).abs().max().item(),
                      "fused_vs_transformers": (fused - hf).abs().max().item()}))
"""


def test_tower_uses_the_kernel_for_window_layers_and_keeps_its_output():
    got = run_interpreted(TOWER_WITH_AND_WITHOUT_KERNEL)
    assert got["kernel_calls"] == 1  # the one window layer; the full-attention layer keeps SDPA
    assert got["windows"] == [4 + 2 * 3 + 1 * 1]  # 16x16: 2x2 windows, 10x22: 2x3, 6x8: one
    assert got["fused_vs_plain"] < 1e-4, got
    assert got["fused_vs_transformers"] < 1e-4, got


def test_kernel_declines_what_it_does_not_compute():
    qkv = torch.zeros(8, 3 * 16 * 80, dtype=torch.bfloat16)
    assert not vision_window_kernel.supported(qkv, 16, 64)  # on the CPU
    assert vision_window_kernel._split(80) == (64, 16)
    assert vision_window_kernel._split(48) == (32, 16)
    assert vision_window_kernel._split(64) is None
    assert vision_window_kernel._split(16) is None
    if torch.cuda.is_available():
        cuda = qkv.cuda()
        assert vision_window_kernel.supported(cuda, 16, 64)
        assert not vision_window_kernel.supported(cuda, 16, 65)  # longer than one program's rows
        assert not vision_window_kernel.supported(cuda.float(), 16, 64)
