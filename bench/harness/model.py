"""A Qwen2.5-VL model of the 7B shape with RANDOM weights (or a smaller shape for a CPU smoke
run), the tiny checkpoint's tokenizer and image processor, prepared by the engine's own
`prepare_model`: the model benchmarked is the model served."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lychee_grpc.engine.model.loader import LoadedModel
from lychee_grpc.engine.model.patch import prepare_model

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TINY = os.environ.get("LYCHEE_TINY_MODEL", str(ROOT / ".cache" / "tiny-model"))


@dataclass(frozen=True)
class Shape:
    """The model's dimensions; `SEVEN_B` is Qwen2.5-VL-7B's (Lychee-Rerank-MM's)."""

    hidden: int = 3584
    intermediate: int = 18944
    layers: int = 28
    heads: int = 28
    kv_heads: int = 4
    vision_depth: int = 32
    vision_hidden: int = 1280
    vision_intermediate: int = 3420
    vision_heads: int = 16
    mrope_section: tuple[int, int, int] = (16, 24, 24)

    def fullatt_blocks(self) -> list[int]:
        # The 7B's four full-attention layers, one every eighth; every other one when shallower.
        if self.vision_depth == 32:
            return [7, 15, 23, 31]
        return list(range(1, self.vision_depth, 2))


SEVEN_B = Shape()
# Small enough to build and run on a CPU in seconds: what the harness smoke test uses.
SMOKE = Shape(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vision_depth=2, vision_hidden=64,
              vision_intermediate=100, vision_heads=4, mrope_section=(2, 3, 3))


def build_model(tiny: str = DEFAULT_TINY, shape: Shape = SEVEN_B, dtype: torch.dtype = torch.bfloat16,
                device: str = "cuda", seed: int = 0) -> LoadedModel:
    """The model on `device`, its weights random (seeded), its ids and processor from `tiny`."""
    from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny)
    tiny_cfg = Qwen2_5_VLConfig.from_pretrained(tiny)
    ids = {k: getattr(tiny_cfg, k) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                             "vision_end_token_id")}
    tc = tiny_cfg.text_config
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, vocab_size=152064, max_position_embeddings=128000,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": list(shape.mrope_section)},
                         rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=tc.bos_token_id,
                         eos_token_id=tc.eos_token_id, pad_token_id=tc.pad_token_id),
        vision_config=dict(depth=shape.vision_depth, hidden_size=shape.vision_hidden,
                           intermediate_size=shape.vision_intermediate, num_heads=shape.vision_heads,
                           out_hidden_size=shape.hidden, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=112, in_channels=3, tokens_per_second=2,
                           fullatt_block_indexes=shape.fullatt_blocks()),
        tie_word_embeddings=False, **ids,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(torch.float32)
    prepare_model(model)
    tok = processor.tokenizer
    return LoadedModel(model=model, processor=processor, yes_id=tok.convert_tokens_to_ids("yes"),
                       no_id=tok.convert_tokens_to_ids("no"), device=torch.device(device), dtype=dtype,
                       attention="sdpa", random_weights=True, parameters=sum(p.numel() for p in model.parameters()),
                       weights=f"random:{shape}:{dtype}:seed={seed}")
