"""Truncation: an over-long document's text is cut to the token limit (images never), and its
score is the reference score of the document made of the kept text."""

from __future__ import annotations

import math

import pytest

from lychee_grpc.engine.api import Truncation
from lychee_grpc.engine.errors import InvalidInput
from lychee_grpc.engine.model.reference import reference_logits
from lychee_grpc.engine.prompt.template import DEFAULT_INSTRUCTION
from lychee_grpc.engine.types import Document, ImagePart, TextPart

from ...helpers import noise_image, text_query

LONG = " ".join(f"word{k} blue denim jacket size {k % 7}" for k in range(60))


def kept_document(doc: Document, kept_text: tuple[str, ...] | None) -> Document:
    """The document made of what truncation kept: its images, and the kept text of each text part."""
    if kept_text is None:
        return doc
    texts = iter(kept_text)
    parts = [TextPart(next(texts)) if isinstance(p, TextPart) else p for p in doc.parts]
    return Document(doc.id, tuple(p for p in parts if not (isinstance(p, TextPart) and not p.text)))


async def _prepare(engine, query, docs, **kw):
    prepared_query = engine.preprocessor.prepare_query(query, DEFAULT_INSTRUCTION)
    return prepared_query, engine.preprocessor.prepare_documents(prepared_query, list(enumerate(docs)), **kw)


@pytest.mark.parametrize("limit", [40, 97, 200])
async def test_a_truncated_document_scores_as_the_document_of_its_kept_text(make_engine, loaded, limit):
    engine = await make_engine()
    query = text_query("denim jacket")
    image = noise_image(56, 56, seed=4)
    docs = [Document("t", (TextPart(LONG),)), Document("m", (TextPart("photo: "), ImagePart(image), TextPart(LONG))),
            Document("short", (TextPart("denim"),))]
    prepared_query, prepared = await _prepare(engine, query, docs, truncation=Truncation.END,
                                              max_tokens_per_document=limit)
    shared = len(prepared_query.prefix_ids)
    assert [p.truncated for p in prepared] == [True, True, False]
    for p in prepared:
        tokens = p.prompt_tokens - shared
        assert tokens <= limit
    assert prepared[0].prompt_tokens - shared >= limit - 3  # cut to the limit, not far below it
    kept = [kept_document(doc, p.kept_text) for doc, p in zip(docs, prepared)]
    assert any(isinstance(part, ImagePart) for part in kept[1].parts)  # images are never cut
    assert LONG.startswith(kept[0].parts[0].text) and kept[0].parts[0].text != LONG

    job = await engine.open_job(query, truncation=Truncation.END, max_tokens_per_document=limit)
    assert await job.add_documents(list(enumerate(docs))) == [p.prompt_tokens for p in prepared]
    job.close()
    scores = sorted([s async for s in job.results()], key=lambda s: s.index)
    assert [s.truncated for s in scores] == [True, True, False]
    expected = reference_logits(loaded.model, loaded.processor, DEFAULT_INSTRUCTION, query.parts,
                                [d.parts for d in kept])
    for score, logit in zip(scores, expected.tolist()):
        assert score.score == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-4)


async def test_without_truncation_an_over_long_document_is_refused_naming_it(make_engine):
    engine = await make_engine()
    with pytest.raises(InvalidInput) as err:
        await _prepare(engine, text_query("denim"), [Document("a", (TextPart("ok"),)),
                                                      Document("b", (TextPart(LONG),))], max_tokens_per_document=64)
    assert [v.field for v in err.value.violations] == ["documents[1]"]
    assert "over the limit of 64" in str(err.value)


async def test_a_document_whose_images_alone_exceed_the_limit_is_refused_even_when_truncating(make_engine):
    engine = await make_engine()
    doc = Document("big", (TextPart("look"), ImagePart(noise_image(224, 224, seed=5)), TextPart(LONG)))
    with pytest.raises(InvalidInput) as err:
        await _prepare(engine, text_query("denim"), [doc], truncation=Truncation.END, max_tokens_per_document=40)
    assert [v.field for v in err.value.violations] == ["documents[0]"]
    assert "images are never truncated" in str(err.value)


async def test_without_a_request_limit_the_servers_applies(make_engine):
    engine = await make_engine()  # the server's limit is 512 tokens (tests/helpers.py)
    prepared_query, prepared = await _prepare(engine, text_query("denim"), [Document("a", (TextPart(LONG * 3),))],
                                              truncation=Truncation.END)
    assert prepared[0].truncated
    assert 500 <= prepared[0].prompt_tokens - len(prepared_query.prefix_ids) <= 512
