"""Documents' text met again is not tokenized again (the token cache, prompt/run_ids.py): their
ids and positions are the ones tokenizing gives, and so are their scores; the cache keeps within
its byte bound, keeps nothing at 0, and hands out lists no caller can change it through."""

from __future__ import annotations

import random

import torch

from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.prompt import template
from lychee_grpc.engine.prompt.run_ids import RunIds
from lychee_grpc.engine.prompt.template import DEFAULT_INSTRUCTION
from lychee_grpc.engine.types import Document, ImagePart, Query, TextPart

from ...helpers import noise_image

QUERY = Query((TextPart("denim jacket"),))
WORDS = "vintage wash denim jacket slim fit women blue cotton 牛仔 夹克 ÉTÉ 2024 😀 <|im_end|>".split()


def _titles(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) for _ in range(n)]


def _text_docs(titles: list[str]) -> list[tuple[int, Document]]:
    # New strings per call, as a transport makes them: the cache is keyed by text, not by object.
    return [(k, Document(str(k), (TextPart("".join(list(t))),))) for k, t in enumerate(titles)]


def _image_docs(titles: list[str], photo: bytes) -> list[tuple[int, Document]]:
    return [(k, Document(str(k), (ImagePart(bytes(photo)), TextPart("".join(list(t))))))
            for k, t in enumerate(titles)]


def _plain(titles: list[str]) -> list[str]:
    # A title holding a special token's string takes the general path, which the cache leaves alone.
    return [t for t in titles if "<|im_end|>" not in t]


def _layout(prepared) -> list[tuple]:
    return [(p.uses_prefix, p.prompt_tokens, p.segment.ids.tolist(), p.segment.positions.tolist()) for p in prepared]


def _counts(engine) -> tuple[int, int]:
    stats = engine.stats()[0]
    return stats.token_cache_hits, stats.token_cache_misses


async def test_titles_met_again_skip_the_tokenizer_and_keep_the_ids_of_the_whole_prompt(make_engine):
    engine = await make_engine()
    pre = engine.preprocessor
    query = pre.prepare_query(QUERY, DEFAULT_INSTRUCTION)
    assert query.clean_boundary_ids is not None  # the path whose runs the cache holds
    titles = _titles(1, 40)
    first = pre.prepare_documents(query, _text_docs(titles))
    plain = _plain(titles)
    assert 0 < len(plain) < len(titles)
    assert _counts(engine) == (0, len(plain))
    again = pre.prepare_documents(query, _text_docs(titles))
    assert _counts(engine) == (len(plain), len(plain))  # every such title answered from the cache
    assert _layout(again) == _layout(first)
    prefix_text = template.prefix_text(DEFAULT_INSTRUCTION, template.render_parts(QUERY.parts))
    for (_, doc), p in zip(_text_docs(titles), again):
        if doc.parts[0].text not in plain:  # user text holding a special token's string is plain text
            continue
        whole = pre.tokenizer.encode(prefix_text + template.suffix_text(template.render_parts(doc.parts)),
                                     add_special_tokens=False)
        assert query.prefix_ids + p.segment.ids.tolist() == whole


async def test_image_documents_met_again_lay_out_their_text_from_the_cache(make_engine):
    engine = await make_engine()
    pre = engine.preprocessor
    query = pre.prepare_query(QUERY, DEFAULT_INSTRUCTION)
    photo = noise_image(56, 56, fmt="PNG", seed=3)
    titles = _titles(2, 12)
    first = pre.prepare_documents(query, _image_docs(titles, photo))
    before = _counts(engine)
    again = pre.prepare_documents(query, _image_docs(titles, photo))
    hits, misses = _counts(engine)
    assert misses == before[1] and hits - before[0] == len(set(_plain(titles))) + 1  # each title, and the lead run
    assert _layout(again) == _layout(first)


async def test_scores_of_a_request_met_again_equal_its_first(make_engine):
    engine = await make_engine()
    docs = [doc for _, doc in _text_docs(_titles(3, 24))]
    first = await score_documents(engine, QUERY, docs)
    again = await score_documents(engine, QUERY, [doc for _, doc in _text_docs(_titles(3, 24))])
    assert _counts(engine)[0] == len(_plain(_titles(3, 24)))
    assert [(s.index, s.score) for s in again.scores] == [(s.index, s.score) for s in first.scores]


async def test_a_zero_bound_tokenizes_every_document(make_engine):
    engine = await make_engine(token_cache_bytes=0)
    pre = engine.preprocessor
    query = pre.prepare_query(QUERY, DEFAULT_INSTRUCTION)
    titles = _titles(4, 10)
    first = pre.prepare_documents(query, _text_docs(titles))
    again = pre.prepare_documents(query, _text_docs(titles))
    stats = engine.stats()[0]
    assert (stats.token_cache_hits, stats.token_cache_bytes, stats.token_cache_capacity_bytes) == (0, 0, 0)
    assert _layout(again) == _layout(first)


async def test_the_cache_stays_within_its_bound_and_keeps_the_latest(make_engine):
    engine = await make_engine(token_cache_bytes=4096)
    pre = engine.preprocessor
    query = pre.prepare_query(QUERY, DEFAULT_INSTRUCTION)
    for seed in range(5, 15):
        pre.prepare_documents(query, _text_docs(_titles(seed, 30)))
        stats = engine.stats()[0]
        assert 0 < stats.token_cache_bytes <= stats.token_cache_capacity_bytes == 4096
    last = _plain(_titles(14, 30))[-3:]
    before = _counts(engine)
    uncached = await make_engine(token_cache_bytes=0)
    want = uncached.preprocessor.prepare_documents(uncached.preprocessor.prepare_query(QUERY, DEFAULT_INSTRUCTION),
                                                   _text_docs(last))
    assert _layout(pre.prepare_documents(query, _text_docs(last))) == _layout(want)
    assert _counts(engine)[0] - before[0] == 3  # the most recent titles were still held


def test_held_ids_are_handed_out_as_they_are_held_and_cannot_be_changed():
    runs = RunIds(1 << 20)
    calls: list[list[str]] = []

    def tokenize(texts: list[str]) -> list[list[int]]:
        calls.append(list(texts))
        return [[len(t), 151_000 + len(t), 7] for t in texts]

    assert runs.ids(["ab", "cde"], tokenize) == [(2, 151_002, 7), (3, 151_003, 7)]
    got = runs.ids(["cde", "ab", "f"], tokenize)
    assert calls == [["ab", "cde"], ["f"]]  # only the new text went to the tokenizer
    assert all(isinstance(ids, tuple) for ids in got)  # immutable: no caller changes what is held
    assert runs.known(["ab", "cde", "f"]) == [(2, 151_002, 7), (3, 151_003, 7), (1, 151_001, 7)]
    assert runs.known(["ab", "new"]) is None
    assert (runs.hits, runs.misses) == (5, 3)
    assert 0 < runs.bytes <= runs.capacity_bytes
    assert torch.tensor(runs.known(["f"])[0]).dtype == torch.int64


def test_a_text_repeated_in_one_call_goes_to_the_tokenizer_once_with_or_without_the_cache():
    for capacity in (1 << 20, 0):
        runs = RunIds(capacity)
        calls: list[list[str]] = []

        def tokenize(texts: list[str], calls: list[list[str]] = calls) -> list[list[int]]:
            calls.append(list(texts))
            return [[len(t), 151_000 + len(t)] for t in texts]

        assert runs.ids(["abc", "de", "abc", "abc"], tokenize) == [(3, 151_003), (2, 151_002), (3, 151_003),
                                                                   (3, 151_003)]
        assert calls == [["abc", "de"]]
        assert runs.ids(["xy", "abc", "xy"], tokenize) == [(2, 151_002), (3, 151_003), (2, 151_002)]
        assert calls[-1] == ["xy"] if capacity else ["xy", "abc"]  # only what is not held
        assert (runs.hits, runs.misses) == ((1, 6) if capacity else (0, 0))  # a miss per copy, as served


async def test_documents_partly_held_and_repeated_lay_out_as_tokenizing_gives(make_engine):
    engine = await make_engine()
    uncached = await make_engine(token_cache_bytes=0)
    photo = noise_image(56, 56, fmt="PNG", seed=5)
    old, new = _plain(_titles(6, 10)), _plain(_titles(7, 10))
    mixed = old[:4] + new + old[:2] + new[:3]  # some held, some new, some twice in the call
    image_query = Query((ImagePart(noise_image(56, 56, fmt="PNG", seed=6)), TextPart("denim jacket")))
    for query, docs in ((QUERY, lambda titles: _image_docs(titles, photo)),  # the runs tokenized on a decode task
                        (image_query, _text_docs)):  # text documents after an image query: made where needed
        pre = engine.preprocessor
        prepared_query = pre.prepare_query(query, DEFAULT_INSTRUCTION)
        pre.prepare_documents(prepared_query, docs(old))
        hits, misses = _counts(engine)
        got = pre.prepare_documents(prepared_query, docs(mixed))
        want = uncached.preprocessor.prepare_documents(
            uncached.preprocessor.prepare_query(query, DEFAULT_INSTRUCTION), docs(mixed))
        assert _layout(got) == _layout(want)
        distinct_new = [t for t in dict.fromkeys(new) if t not in old]
        assert _counts(engine)[1] - misses == len(distinct_new)  # each distinct new run missed once
        assert _counts(engine)[0] > hits
        pre.run_ids.clear()
