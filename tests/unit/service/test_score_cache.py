"""The pair-score cache: every field that can change a score is in the key (property-tested),
nothing else is; a hit returns the stored floats bit for bit; memory stays inside the bound."""

from __future__ import annotations

import dataclasses
import gc
import struct
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from lychee_grpc.engine.api import EngineInfo, EngineLimits
from lychee_grpc.engine.types import Document, ImagePart, Part, Query, TextPart
from lychee_grpc.service.score_cache import ENTRY_BYTES, PairKeys, ScoreCache, StoredScore, model_key

LIMITS = EngineLimits(max_documents_per_request=100, max_tokens_per_document=512, max_query_tokens=64,
                      max_instruction_tokens=64, max_image_bytes=1 << 20, max_image_pixels=1 << 20,
                      min_image_model_pixels=3136, max_image_model_pixels=1003520, max_queue_documents=1000)
INFO = EngineInfo("vec-ai/lychee-rerank-mm", "bfloat16", "flash_attention_2", False, 8_290_000_000,
                  "the default instruction", LIMITS, weights="0123abcd")


@dataclasses.dataclass(frozen=True)
class Pair:
    """Everything a key is made of."""

    info: EngineInfo
    truncation: str
    limit: int
    instruction: str
    query: tuple[Part, ...]
    document: tuple[Part, ...]

    def key(self, doc_id: str = "d") -> bytes:
        keys = PairKeys(model_key(self.info), self.truncation, self.limit, self.instruction, Query(self.query))
        return keys.of(Document(doc_id, self.document))


texts = st.text(min_size=1, max_size=12)
images = st.binary(min_size=1, max_size=16)
parts = st.lists(st.one_of(texts.map(TextPart), images.map(ImagePart)), min_size=1, max_size=3).map(tuple)
pairs = st.builds(lambda t, n, i, q, d: Pair(INFO, t, n, i, q, d), st.sampled_from(["none", "end"]),
                  st.integers(1, 4096), texts, parts, parts)


def _other_parts(value: tuple[Part, ...], extra: str) -> list[tuple[Part, ...]]:
    """Part lists that differ from `value`: a text or an image changed, a part added, the order
    changed, a text split in two (the same characters, other parts)."""
    first = value[0]
    changed = TextPart(first.text + extra) if isinstance(first, TextPart) else ImagePart(first.data + b"\x00")
    out = [(changed, *value[1:]), (*value, TextPart(extra)), (ImagePart(b"\x89PNG"), *value)]
    if len(value) > 1 and value != value[::-1]:
        out.append(value[::-1])
    texts_only = [p for p in value if isinstance(p, TextPart) and len(p.text) > 1]
    if texts_only:
        k = value.index(texts_only[0])
        text = texts_only[0].text
        out.append((*value[:k], TextPart(text[:1]), TextPart(text[1:]), *value[k + 1:]))
    return out


def changed_one_field(pair: Pair, extra: str) -> list[tuple[str, Pair]]:
    """`pair` with exactly one key field changed, for every field."""
    info, limits = pair.info, pair.info.limits
    out = [
        ("model", dataclasses.replace(pair, info=dataclasses.replace(info, model=info.model + extra))),
        ("weights", dataclasses.replace(pair, info=dataclasses.replace(info, weights=info.weights + extra))),
        ("dtype", dataclasses.replace(pair, info=dataclasses.replace(info, dtype="float32"))),
        ("attention", dataclasses.replace(pair, info=dataclasses.replace(info, attention="sdpa"))),
        ("min pixels", dataclasses.replace(pair, info=dataclasses.replace(info, limits=dataclasses.replace(
            limits, min_image_model_pixels=limits.min_image_model_pixels + 1)))),
        ("max pixels", dataclasses.replace(pair, info=dataclasses.replace(info, limits=dataclasses.replace(
            limits, max_image_model_pixels=limits.max_image_model_pixels - 1)))),
        ("batch invariant", dataclasses.replace(pair, info=dataclasses.replace(
            info, batch_invariant=not info.batch_invariant))),
        ("truncation", dataclasses.replace(pair, truncation="end" if pair.truncation == "none" else "none")),
        ("token limit", dataclasses.replace(pair, limit=pair.limit + 1)),
        ("instruction", dataclasses.replace(pair, instruction=pair.instruction + extra)),
    ]
    out += [("query", dataclasses.replace(pair, query=q)) for q in _other_parts(pair.query, extra)]
    out += [("document", dataclasses.replace(pair, document=d)) for d in _other_parts(pair.document, extra)]
    return out


@settings(max_examples=150, deadline=None)
@given(pairs, st.text(min_size=1, max_size=3))
def test_changing_any_one_key_field_alone_is_a_miss(pair, extra):
    cache = ScoreCache(1 << 20)
    stored = StoredScore(logit=1.25, score=0.777, prompt_tokens=42, truncated=False)
    cache.put(pair.key(), stored)
    assert cache.get(pair.key("another id")) == stored  # the id is not part of the pair
    for field, other in changed_one_field(pair, extra):
        assert other.key() != pair.key(), field
        assert cache.get(other.key()) is None, field


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False), st.floats(0, 1), st.integers(0, 2**32 - 1), st.booleans())
def test_a_hit_returns_the_stored_floats_bit_for_bit(logit, score, tokens, truncated):
    cache = ScoreCache(1 << 20)
    cache.put(b"k" * 16, StoredScore(logit, score, tokens, truncated))
    got = cache.get(b"k" * 16)
    assert got is not None
    assert struct.pack("<dd", got.logit, got.score) == struct.pack("<dd", logit, score)
    assert (got.prompt_tokens, got.truncated) == (tokens, truncated)


def test_least_recently_used_pairs_leave_first_and_a_read_refreshes():
    cache = ScoreCache(3 * ENTRY_BYTES)
    value = StoredScore(0.0, 0.5, 1, False)
    for key in (b"a", b"b", b"c"):
        cache.put(key, value)
    assert cache.get(b"a") == value  # now the most recent
    cache.put(b"d", value)
    assert cache.get(b"b") is None and cache.get(b"a") == value and cache.get(b"d") == value
    assert (len(cache), cache.bytes, cache.evictions) == (3, 3 * ENTRY_BYTES, 1)


def test_zero_turns_the_cache_off():
    cache = ScoreCache(0)
    cache.put(b"a", StoredScore(0.0, 0.5, 1, False))
    assert not cache.enabled and cache.get(b"a") is None and len(cache) == 0 and cache.misses == 0


def test_memory_stays_inside_the_bound_under_a_long_run_of_distinct_pairs():
    """200,000 distinct pairs through a 4 MiB cache: it never holds more than its bound by its own
    count, and the Python heap it holds (tracemalloc) stays within that bound too."""
    capacity = 4 << 20
    keys = PairKeys(model_key(INFO), "none", 512, "instruction", Query((TextPart("retro denim jacket"),)))
    gc.collect()
    tracemalloc.start()
    try:
        cache = ScoreCache(capacity)
        base = tracemalloc.get_traced_memory()[0]
        peak = 0
        for k in range(200_000):
            cache.put(keys.of(Document("", (TextPart(f"title {k}"),))), StoredScore(k * 0.5, 0.25, k, k % 2 == 0))
            assert cache.bytes <= capacity
            if k % 997 == 0:
                peak = max(peak, tracemalloc.get_traced_memory()[0] - base)
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(cache) == capacity // ENTRY_BYTES and cache.evictions == 200_000 - len(cache)
    assert max(peak, held) <= capacity, f"{max(peak, held) / len(cache):.0f} bytes per entry held"
