"""A tiny Qwen2.5-VL checkpoint with random weights, for tests and the demo.

It loads through exactly the same `from_pretrained` path as Lychee-Rerank-MM: a locally trained
byte-level BPE tokenizer with the Qwen special tokens (and "yes"/"no" as single tokens), a
Qwen2.5-VL image processor, a video processor (the processor class insists on one), the chat
template, and a small `Qwen2_5_VLForConditionalGeneration` saved with `save_pretrained`.
Its scores mean nothing; `config.lychee_random_weights` says so, and the server reports it.
"""

from __future__ import annotations

import json
from pathlib import Path

RANDOM_WEIGHTS_FLAG = "lychee_random_weights"

# The Qwen2 pre-tokenizer split (same as the real tokenizer), so that token boundaries behave
# like the real model's in tests.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

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

_CORPUS = [
    'Judge whether the Document meets the requirements based on the Query and the Instruct '
    'provided. Note that the answer can only be "yes" or "no".',
    "Given a web search query, retrieve relevant passages that answer the query",
    "Given an e-commerce search query, rank product titles by their relevance to the user's need",
    "<Instruct>: <Query>: <Document>: yes no yes no Yes No",
    "retro denim jacket women slim fit vintage wash blue jeans coat spring autumn",
    "same sofa under 5000 living room fabric sofa grey three seater modern minimalist",
    "wireless bluetooth earbuds noise cancelling long battery life waterproof sport",
    "running shoes men breathable mesh lightweight cushioning marathon training",
    "ins style Morandi colours slimming dress summer chiffon floral midi skirt",
    "stainless steel water bottle insulated 500ml leak proof kids school",
    "mechanical keyboard RGB backlit hot swappable switches gaming office",
    "organic green tea loose leaf 250g gift box spring harvest",
    "复古牛仔外套 女 修身 显瘦 春秋 同款沙发 客厅 布艺 5000元以内 无线蓝牙耳机 降噪",
    "跑步鞋 男 透气 轻便 减震 连衣裙 夏季 雪纺 碎花 莫兰迪色 保温杯 机械键盘",
    "the a an of for with and in on to is are this that what which how price cheap best new",
    "0 1 2 3 4 5 6 7 8 9 10 100 500 1000 5000 cm kg ml , . ! ? : ; ( ) [ ] - _ / \\ ' \"",
]

_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _train_tokenizer(vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the words the model must read as single tokens so the merges surely form.
    corpus = [*_CORPUS, "yes no " * 50, "yes\nno\n" * 50]
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    return json.loads(tok.to_str())["model"]


def make_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Writes the tiny checkpoint to `out_dir` and returns the path."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2Tokenizer,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )
    from transformers.tokenization_utils_base import AddedToken

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    bpe = _train_tokenizer(vocab_size=1024)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=bpe["vocab"], merges=merges, errors="replace")
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]}
    )
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.model_max_length = 32768
    for word in ("yes", "no"):
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"tiny tokenizer splits {word!r} into {ids}")

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab_size = len(tokenizer)
    vocab_size += -vocab_size % 64

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
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    setattr(config, RANDOM_WEIGHTS_FLAG, True)

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
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
    )
    return out
