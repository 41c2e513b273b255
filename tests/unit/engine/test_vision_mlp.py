"""Zero-padding the vision MLP width leaves the tower's output unchanged."""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from lychee_grpc.engine.vision.mlp import align_vision_mlp


def test_padding_an_unaligned_vision_mlp_is_exact():
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "vocab_size": 128,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}},
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 30, "num_heads": 2, "out_hidden_size": 32,
                       "fullatt_block_indexes": [1]},
    )
    torch.manual_seed(0)
    visual = Qwen2_5_VLForConditionalGeneration(config).model.visual.eval()
    with torch.no_grad():
        for p in visual.parameters():
            p.normal_(0, 0.3)
    pixels = torch.randn(2 * 8 * 8, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(1))
    grid = torch.tensor([[1, 8, 8], [1, 8, 8]])
    with torch.inference_mode():
        before = visual(pixels, grid_thw=grid).pooler_output
    assert align_vision_mlp(visual) == 32
    assert visual.blocks[0].mlp.down_proj.weight.shape == (32, 32)
    with torch.inference_mode():
        after = visual(pixels, grid_thw=grid).pooler_output
    assert before.abs().max() > 0.1
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4)
    assert align_vision_mlp(visual) == 0  # already aligned
