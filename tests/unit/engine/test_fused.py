"""The fused elementwise pieces compute what transformers' modules compute (checked eagerly on
the CPU; on CUDA the same functions are compiled)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch

from lychee_grpc.engine.lm.fused import FusedOps, Kernel, rms_norm, rope, silu_mul


def test_rms_norm_and_mlp_match_transformers_modules(loaded):
    layer = loaded.model.model.language_model.layers[0]
    x = torch.randn(7, layer.input_layernorm.weight.numel())
    eps = layer.input_layernorm.variance_epsilon
    assert torch.allclose(rms_norm(x, layer.input_layernorm.weight, eps), layer.input_layernorm(x), atol=1e-6)
    mlp = layer.mlp
    assert torch.allclose(mlp.down_proj(silu_mul(mlp.gate_proj(x), mlp.up_proj(x))), mlp(x), atol=1e-5)


def test_rope_matches_transformers():
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

    q, k = torch.randn(1, 3, 5, 16), torch.randn(1, 2, 5, 16)
    cos, sin = torch.randn(1, 5, 16), torch.randn(1, 5, 16)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, cos, sin)
    assert torch.allclose(rope(q, cos.unsqueeze(1), sin.unsqueeze(1)), ref_q, atol=1e-6)
    assert torch.allclose(rope(k, cos.unsqueeze(1), sin.unsqueeze(1)), ref_k, atol=1e-6)


def test_tower_blocks_with_the_fused_pieces_give_transformers_output(loaded):
    from lychee_grpc.engine.vision.tower import VisionTower

    visual = loaded.model.model.visual
    pixels = torch.randn(2 * 16 * 16, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(0))
    grid = torch.tensor([[1, 16, 16], [1, 16, 16]])
    ops = FusedOps(torch.device("cpu"))
    with torch.inference_mode():
        before = visual(pixels, grid_thw=grid).pooler_output
        after = VisionTower(visual, ops)(pixels, [(1, 16, 16), (1, 16, 16)])
    assert before.abs().max() > 0.1
    # float32 reductions may split differently across threads; a wrong formula is off by ~0.1.
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4)


def test_the_engine_leaves_the_models_forwards_alone(loaded):
    """No module of the loaded model has its forward replaced: the engine's forwards are its own."""
    assert not [name for name, module in loaded.model.named_modules() if "forward" in vars(module)]


def test_vision_qk_rope_from_packed_qkv_matches_transformers():
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    from lychee_grpc.engine.lm.fused import vision_qk_rope

    g = torch.Generator().manual_seed(0)
    heads, dim, n = 4, 10, 9
    for dtype in (torch.float32, torch.bfloat16):
        qkv = torch.randn(n, 3 * heads * dim, generator=g).to(dtype)
        cos, sin = torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)  # halves differ
        q, k, _ = qkv.view(n, 3, heads, dim).unbind(1)
        ref_q, ref_k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        got_q, got_k = vision_qk_rope(qkv, heads, cos, sin)
        assert got_q.dtype == dtype and got_q.shape == (n, heads, dim)
        assert torch.equal(got_q, ref_q) and torch.equal(got_k, ref_k)


def test_a_small_batch_runs_the_eager_ops_and_a_large_one_the_compiled_kernel():
    calls: list[str] = []

    def compiler(fn):
        def compiled(*args):
            calls.append("compiled")
            return fn(*args)
        return compiled

    def double(x):
        calls.append("eager")
        return x * 2

    kernel = Kernel(double, compiled=True, compiler=compiler)
    small, large = torch.ones(Kernel.eager_below - 1, 4), torch.ones(Kernel.eager_below, 4)
    assert torch.equal(kernel(small), small * 2) and calls == ["eager"]
    calls.clear()
    assert torch.equal(kernel(large), large * 2) and calls == ["compiled", "eager"]  # the compiled fn traces fn
    calls.clear()
    invariant = Kernel(double, compiled=True, invariant=True, compiler=compiler)  # the same kernel at every size
    invariant(torch.ones(8, 4))
    assert calls[0] == "compiled"


def doubling(calls: list[str]) -> tuple[Callable, Callable]:
    """An eager function and its 'kernel', each recording its calls."""

    def double(x):
        calls.append("eager")
        return x * 2

    def fast(x):
        calls.append("fast")
        return x + x

    return double, fast


def test_a_hand_written_kernel_serves_large_batches_and_one_that_fails_falls_back_to_eager_for_good(caplog):
    calls: list[str] = []
    double, fast = doubling(calls)
    kernel = Kernel(double, compiled=True, fast=fast)
    small, large = torch.ones(Kernel.eager_below - 1, 4), torch.ones(Kernel.eager_below, 4)
    assert torch.equal(kernel(small), small * 2) and torch.equal(kernel(large), large * 2)
    assert calls == ["eager", "fast"]

    def broken(x):
        raise RuntimeError("no kernel image for this GPU")

    calls.clear()
    failing = Kernel(double, compiled=True, fast=broken)
    assert torch.equal(failing(large), large * 2) and torch.equal(failing(large), large * 2)
    assert calls == ["eager", "eager"]
    assert "the fused kernel for double failed (no kernel image for this GPU)" in caplog.text


def test_a_kernel_sends_what_it_does_not_take_to_eager_without_giving_up(caplog):
    calls: list[str] = []
    double, fast = doubling(calls)
    kernel = Kernel(double, compiled=True, fast=fast, takes=lambda x: x.shape[1] % 4 == 0, eager_below=8,
                    name="doubling")
    narrow, wide, few = torch.ones(8, 3), torch.ones(8, 4), torch.ones(7, 4)
    with caplog.at_level(logging.WARNING):
        assert torch.equal(kernel(narrow), narrow * 2) and torch.equal(kernel(wide), wide * 2)
        assert torch.equal(kernel(few), few * 2) and torch.equal(kernel(wide), wide * 2)
    assert calls == ["eager", "fast", "eager", "fast"]  # the kernel stays on after a shape it does not take
    assert caplog.text == ""


def test_running_out_of_memory_in_a_kernel_reaches_the_caller_and_keeps_the_kernel(caplog):
    calls: list[str] = []
    double, fast = doubling(calls)
    short = [True]

    def tight(x):
        if short.pop() if short else False:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 970.00 MiB")
        return fast(x)

    kernel = Kernel(double, compiled=True, fast=tight)
    large = torch.ones(Kernel.eager_below, 4)
    with caplog.at_level(logging.WARNING):
        with pytest.raises(torch.OutOfMemoryError):  # the scheduler splits the batch
            kernel(large)
        assert torch.equal(kernel(large), large * 2)
    assert calls == ["fast"]  # the kernel, not the eager ops, after the batch's memory ran out
    assert caplog.text == ""


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="the fused gate/up kernel needs a Hopper-class GPU")
def test_gate_up_silu_fuses_large_batches_as_the_three_steps_round_and_falls_back_for_good(monkeypatch, caplog):
    from lychee_grpc.engine.util import swiglu_kernel

    dev, bf = torch.device("cuda"), torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    gate = torch.nn.Linear(1280, 3424, bias=True, device=dev, dtype=bf)
    up = torch.nn.Linear(1280, 3424, bias=True, device=dev, dtype=bf)
    calls: list[int] = []
    real = swiglu_kernel.gate_up_silu
    monkeypatch.setattr(swiglu_kernel, "gate_up_silu", lambda x, *a: calls.append(x.shape[0]) or real(x, *a))
    ops = FusedOps(dev)
    for rows in (16, 2048):
        x = torch.randn(rows, 1280, device=dev, dtype=bf, generator=g)
        with torch.inference_mode():
            want = silu_mul(gate(x), up(x))
            got = ops.gate_up_silu(gate, up, x)
            # The LM keeps cuBLAS outside the batch-invariant mode.
            assert torch.equal(ops.gate_up_silu(gate, up, x, cublas_first=True), want)
        # Same roundings; cuBLAS may order K's sums differently: a unit in the last place at most.
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    assert calls == [2048]  # below FusedOps.swiglu_from the three steps run
    narrow_gate = torch.nn.Linear(1279, 64, device=dev, dtype=bf)  # rows of 2,558 bytes: not the kernel's
    narrow_up = torch.nn.Linear(1279, 64, device=dev, dtype=bf)
    odd = torch.randn(2048, 1279, device=dev, dtype=bf, generator=g)
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        assert torch.equal(ops.gate_up_silu(narrow_gate, narrow_up, odd), silu_mul(narrow_gate(odd), narrow_up(odd)))
    assert calls == [2048]  # a shape the kernel does not take runs the three steps, no warning
    assert "failed" not in caplog.text

    def broken(*args):
        raise RuntimeError("no kernel today")

    monkeypatch.setattr(swiglu_kernel, "gate_up_silu", broken)
    ops = FusedOps(dev)
    x = torch.randn(2048, 1280, device=dev, dtype=bf, generator=g)
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        first = ops.gate_up_silu(gate, up, x)
        monkeypatch.setattr(swiglu_kernel, "gate_up_silu", real)
        again = ops.gate_up_silu(gate, up, x)
        want = silu_mul(gate(x), up(x))
    assert torch.equal(first, want) and torch.equal(again, want)  # the three steps, from the failure on
    assert "the fused kernel for gate/up/SiLU failed (no kernel today)" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the LM's RoPE kernel runs on CUDA")
def test_the_lm_rope_on_cuda_is_eagers_result_bit_for_bit_at_every_batch_size():
    ops = FusedOps(torch.device("cuda"))
    g = torch.Generator(device="cuda").manual_seed(0)
    for heads in (28, 4):  # the 7B's queries and keys
        rows = 3000
        x = torch.randn(rows, heads * 128, generator=g, device="cuda").bfloat16().view(rows, heads, 128)
        angles = torch.rand(rows, 1, 128, generator=g, device="cuda") * 100
        cos, sin = angles.cos().bfloat16(), angles.sin().bfloat16()
        whole = ops.rope(x, cos, sin)
        assert torch.equal(whole, rope(x, cos, sin)), heads
        for i, j in ((0, 1), (11, 18), (100, 1200)):
            assert torch.equal(ops.rope(x[i:j], cos[i:j], sin[i:j]), whole[i:j]), (heads, i, j)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the vision tower's RoPE kernel runs on CUDA")
def test_the_vision_qk_rope_on_cuda_is_eagers_result_bit_for_bit_at_every_batch_size():
    from lychee_grpc.engine.lm.fused import vision_qk_rope

    g = torch.Generator(device="cuda").manual_seed(0)
    heads, dim, rows = 16, 80, 4096  # the 7B tower's; 4 images of 448x448
    qkv = (torch.randn(rows, 3 * heads * dim, generator=g, device="cuda") * 4).bfloat16()
    angles = torch.rand(rows, dim, generator=g, device="cuda") * 100
    cos, sin = angles.cos(), angles.sin()
    for invariant in (False, True):
        ops = FusedOps(torch.device("cuda"), batch_invariant=invariant)
        q, k = ops.vision_qk_rope(qkv, heads, cos, sin)
        want_q, want_k = vision_qk_rope(qkv, heads, cos, sin)
        assert torch.equal(q, want_q) and torch.equal(k, want_k) and q.stride() == want_q.stride()
        for i, j in ((0, 1), (11, 18), (100, 1200)):
            part = ops.vision_qk_rope(qkv[i:j], heads, cos[i:j], sin[i:j])
            assert torch.equal(part[0], q[i:j]) and torch.equal(part[1], k[i:j]), (invariant, i, j)
