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


def test_each_request_is_sent_as_new_parts_so_no_digest_carries_over(loaded):
    """A transport builds new parts for every call; so does the benchmark (`as_received`), or a
    request would find its images' digests computed by the one before it."""
    from bench.harness.workloads import as_received, mixed_workload
    from lychee_grpc.engine.types import ImagePart

    query, docs = mixed_workload(loaded.processor.tokenizer, 3, documents=3)
    for doc in docs:
        _ = doc.parts[0].digest  # the first request computes them
    again_query, again = as_received(query, docs)
    assert again_query == query and again == docs  # the same request, part for part
    images = [(old, new) for before, after in zip([query, *docs], [again_query, *again])
              for old, new in zip(before.parts, after.parts) if isinstance(old, ImagePart)]
    assert len(images) == 4  # the query's image and each document's
    for old, new in images:
        assert new is not old and new.data is old.data
        assert "_digest" not in new.__dict__
