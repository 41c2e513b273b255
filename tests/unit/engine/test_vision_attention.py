"""The packed vision attention computes what transformers' per-window loop computes, in far fewer calls."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_window_index

from lychee_grpc.engine.vision import attention as vision_attention
from lychee_grpc.engine.vision.attention import Plan, VisionAttention
from lychee_grpc.engine.vision.tower import VisionTower

# Grids in patch units (t, h, w); h and w even. Their windows (112 px = 8 patches) come in several lengths.
GRIDS = [(1, 16, 16), (1, 10, 22), (1, 32, 32), (1, 6, 8)]
PATCH_DIM = 3 * 2 * 14 * 14


def make_model(attn_implementation: str = "sdpa") -> torch.nn.Module:
    config = transformers.Qwen2_5_VLConfig(
        vision_config=dict(
            depth=4,
            hidden_size=64,
            intermediate_size=128,
            num_heads=4,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[1, 3],
        ),
        text_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=512,
            bos_token_id=0,
            eos_token_id=1,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        ),
    )
    torch.manual_seed(0)
    model = transformers.Qwen2_5_VLForConditionalGeneration._from_config(
        config, attn_implementation=attn_implementation, dtype=torch.float32
    )
    with torch.no_grad():
        for module in model.model.visual.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv3d)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, 1.0 / math.sqrt(fan_in))
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grid = torch.tensor(GRIDS)
    tokens = int(grid.prod(dim=1).sum())
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(tokens, PATCH_DIM, generator=generator)
    other = torch.randn(tokens, PATCH_DIM, generator=generator)
    return pixels, other, grid


def chunk_lengths(cu_seqlens: torch.Tensor) -> list[int]:
    return (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()


def layer_cu_seqlens(visual, grid: torch.Tensor) -> list[torch.Tensor]:
    """The cu_seqlens each block of the tower gets, as the tower computes them."""
    config = visual.config
    _, cu_windows = get_vision_window_index(grid, config.spatial_merge_size, config.window_size, config.patch_size)
    cu_full = get_vision_cu_seqlens(grid)
    return [cu_full if i in config.fullatt_block_indexes else cu_windows for i in range(config.depth)]


def tower(model, pixels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """transformers' own tower: SDPA once per chunk."""
    with torch.inference_mode():
        return model.model.visual(pixels, grid_thw=grid).pooler_output


def packed_tower(model, pixels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The engine's tower: one attention call (or one per distinct chunk length) per layer."""
    with torch.inference_mode():
        return VisionTower(model.model.visual)(pixels, [tuple(g) for g in grid.tolist()])


def test_inputs_have_windows_of_unequal_length(inputs):
    model = make_model()
    window_cu = layer_cu_seqlens(model.model.visual, inputs[2])[0]
    lengths = chunk_lengths(window_cu)
    assert len(set(lengths)) > 1
    assert len(lengths) > 3 * len(set(lengths))


def test_packed_tower_matches_per_window_loop_float32(inputs):
    pixels, other, grid = inputs
    model = make_model()
    expected = tower(model, pixels, grid)
    expected_other = tower(model, other, grid)

    got = packed_tower(model, pixels, grid)
    got_other = packed_tower(model, other, grid)

    assert got.shape == expected.shape == (int(grid.prod(dim=1).sum()) // 4, 64)
    # The output carries the input: not constant, and other pixels give a clearly different one.
    assert expected.std() > 0.1
    assert (expected - expected_other).abs().max() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_other, expected_other, atol=1e-5, rtol=1e-5)


def test_packed_tower_matches_per_window_loop_bfloat16(inputs):
    pixels, _, grid = inputs
    model = make_model().to(torch.bfloat16)
    expected = tower(model, pixels.bfloat16(), grid).float()
    got = packed_tower(model, pixels.bfloat16(), grid).float()
    assert got.dtype == expected.dtype and got.shape == expected.shape
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 0.03 * scale


def test_flash_attention_config_keeps_transformers_own_attention(monkeypatch):
    model = make_model()
    model.model.visual.config._attn_implementation = "flash_attention_2"
    attention = model.model.visual.blocks[0].attn
    seen = []
    monkeypatch.setattr(Qwen2_5_VLVisionAttention, "forward", lambda self, *args, **kwargs: seen.append(self) or 0)
    cu_seqlens = torch.tensor([0, 4], dtype=torch.int32)
    VisionAttention()(attention, torch.randn(4, 64), Plan(cu_seqlens), torch.ones(4, 16), torch.zeros(4, 16))
    assert seen == [attention]


def count_sdpa_calls(monkeypatch) -> list[tuple[int, ...]]:
    calls: list[tuple[int, ...]] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(query, *args, **kwargs):
        calls.append(tuple(query.shape))
        return real(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    return calls


def test_one_sdpa_call_per_distinct_chunk_length(inputs, monkeypatch):
    pixels, _, grid = inputs
    model = make_model()
    per_layer = [chunk_lengths(cu) for cu in layer_cu_seqlens(model.model.visual, grid)]
    calls = count_sdpa_calls(monkeypatch)

    tower(model, pixels, grid)
    assert len(calls) == sum(len(lengths) for lengths in per_layer)  # transformers: once per chunk

    calls.clear()
    packed_tower(model, pixels, grid)
    assert len(calls) == sum(len(set(lengths)) for lengths in per_layer)
    assert len(calls) < sum(len(lengths) for lengths in per_layer) / 3
    # Each call is a [chunks, heads, length, head_dim] batch of all the chunks of one length.
    window_lengths = per_layer[0]
    window_calls = calls[: len(set(window_lengths))]
    assert sorted((n, length) for n, _, length, _ in window_calls) == sorted(
        (window_lengths.count(length), length) for length in set(window_lengths)
    )


def test_single_attention_call_on_ragged_chunks(monkeypatch):
    torch.manual_seed(3)
    model = make_model()
    attention = model.model.visual.blocks[0].attn
    lengths = [16, 16, 7, 16, 3, 7, 16, 1]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    hidden = torch.randn(sum(lengths), 64)
    angles = torch.randn(sum(lengths), 8)
    position_embeddings = (torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin())

    with torch.inference_mode():
        expected = attention(hidden, cu_seqlens=cu_seqlens, position_embeddings=position_embeddings)
        calls = count_sdpa_calls(monkeypatch)
        got = VisionAttention()(attention, hidden, Plan(cu_seqlens), *position_embeddings)
    assert len(calls) == len(set(lengths))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # Attention stays within a chunk: changing the last chunk leaves the others untouched.
    changed = hidden.clone()
    changed[-1] += 1.0
    with torch.inference_mode():
        moved = VisionAttention()(attention, changed, Plan(cu_seqlens), *position_embeddings)
    torch.testing.assert_close(moved[:-1], got[:-1])
    assert (moved[-1] - got[-1]).abs().max() > 1e-3


def test_plan_groups_chunks_by_length():
    cu_seqlens = torch.tensor([0, 4, 8, 11, 15], dtype=torch.int32)
    plan = Plan(cu_seqlens)
    assert sorted((length, count) for length, count, _ in plan.groups()) == [(3, 1), (4, 3)]
    equal = torch.tensor([0, 4, 8, 12], dtype=torch.int32)
    assert [(length, count, index) for length, count, index in Plan(equal, [0, 4, 8, 12]).groups()] == [(4, 3, None)]
    with pytest.raises(ValueError, match="non-decreasing"):
        Plan(torch.tensor([0, 4, 2], dtype=torch.int32))


@pytest.mark.gpu  # varlen_attn needs CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_matches_per_window_loop(inputs, dtype, monkeypatch):
    # cuDNN's float32 convolutions default to TF32: transformers' patch Conv3d would then round
    # where the tower's patch GEMM (full float32 matmuls) does not, ~1e-3 apart on the H200.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    pixels, _, grid = inputs
    model = make_model().to("cuda", dtype)
    pixels, grid = pixels.to("cuda", dtype), grid.to("cuda")
    expected = tower(model, pixels, grid).float()
    varlen_calls = []
    real = vision_attention.varlen_attn

    def counting(*args, **kwargs):
        varlen_calls.append(args[0].dtype)
        return real(*args, **kwargs)

    monkeypatch.setattr(vision_attention, "varlen_attn", counting)
    with torch.inference_mode():
        got = VisionTower(model.model.visual, window_kernel=False)(pixels, [tuple(g) for g in grid.tolist()]).float()
    if dtype == torch.bfloat16:
        assert len(varlen_calls) == 4  # one per layer
        torch.testing.assert_close(got, expected, atol=0.03 * expected.abs().max().item(), rtol=0)
    else:  # flash refuses float32: grouped sdpa
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def ragged_layer_inputs(device: str = "cpu"):
    model = make_model().to(device)
    lengths = [16, 16, 7]  # two lengths: varlen_attn's path on CUDA
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    hidden = torch.randn(sum(lengths), 64, device=device)
    angles = torch.randn(sum(lengths), 8, device=device)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    return model.model.visual.blocks[0].attn, hidden, Plan(cu_seqlens), cos, sin


def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 24.00 MiB")


def test_running_out_of_memory_in_the_window_kernel_reaches_the_caller_and_keeps_the_kernel(monkeypatch):
    attention, hidden, plan, cos, sin = ragged_layer_inputs()
    monkeypatch.setattr(vision_attention.vision_window_kernel, "supported", lambda *args: True)
    monkeypatch.setattr(vision_attention.vision_window_kernel, "window_attention_rope", out_of_memory)
    layer = VisionAttention(window_kernel=True)
    with torch.inference_mode(), pytest.raises(torch.OutOfMemoryError):  # the scheduler splits the batch
        layer(attention, hidden, plan, cos, sin)
    assert layer.window_kernel  # still on: the memory is the batch's, not the kernel's


@pytest.mark.skipif(not torch.cuda.is_available() or vision_attention.varlen_attn is None,
                    reason="varlen_attn runs on CUDA")
def test_running_out_of_memory_in_varlen_attention_is_no_refusal(monkeypatch):
    attention, hidden, plan, cos, sin = ragged_layer_inputs("cuda")
    real, calls = vision_attention.varlen_attn, []
    layer = VisionAttention(window_kernel=False)
    monkeypatch.setattr(vision_attention, "varlen_attn", out_of_memory)
    with torch.inference_mode(), pytest.raises(torch.OutOfMemoryError):
        layer(attention, hidden, plan, cos, sin)
    monkeypatch.setattr(vision_attention, "varlen_attn", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.inference_mode():
        layer(attention, hidden, plan, cos, sin)
    assert calls == [1]  # varlen_attn again, not grouped SDPA for good
