"""The bench's token workloads are counted in Lychee-Rerank-MM's own tokens: the tiny checkpoint's
tokenizer is the real Qwen2.5 one, and T100's titles hold 48-144 of its tokens."""

from __future__ import annotations

from bench.harness.workloads import WORDS, image_workload, text_workload


def test_t100_titles_are_48_to_144_real_qwen_tokens(loaded):
    tok = loaded.processor.tokenizer
    assert tok.convert_tokens_to_ids(["yes", "no"]) == [9693, 2152]  # the real vocabulary
    # The overshoot past a target is at most one word's tokens.
    longest_word = max(len(tok.encode(" " + w, add_special_tokens=False)) for w in WORDS)
    query, docs = text_workload(tok, 1)
    counts = [len(tok.encode(d.parts[0].text, add_special_tokens=False)) for d in docs]
    assert len(counts) == 100
    assert 48 <= min(counts) and max(counts) < 144 + longest_word
    assert 16 <= len(tok.encode(query.parts[0].text, add_special_tokens=False)) < 16 + longest_word


def test_i100_titles_are_32_real_qwen_tokens(loaded):
    tok = loaded.processor.tokenizer
    longest_word = max(len(tok.encode(" " + w, add_special_tokens=False)) for w in WORDS)
    _, docs = image_workload(tok, 2, size=56, documents=5)
    for doc in docs:
        assert 32 <= len(tok.encode(doc.parts[1].text, add_special_tokens=False)) < 32 + longest_word
