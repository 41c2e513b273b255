"""A job's query is prepared with its first documents (one hop to the preparation threads per
request): a call beside the first waits for it, a refused query refuses every call of its job, and
the usage counts the query's images once."""

from __future__ import annotations

import asyncio

import pytest

from lychee_grpc.engine import Document, ImagePart, InvalidInput, Query, TextPart

from ...helpers import noise_image, text_docs, text_query


async def test_the_first_documents_bring_the_query_and_a_call_beside_them_waits(make_engine):
    engine = await make_engine()
    job = await engine.open_job(text_query("denim jacket"))
    first, second = await asyncio.gather(job.add_documents(list(enumerate(text_docs("a", "b")))),
                                         job.add_documents([(2, text_docs("c")[0])]))
    job.close()
    scores = sorted(s.index for s in [s async for s in job.results()])
    assert len(first) == 2 and len(second) == 1 and all(n > 0 for n in first + second)
    assert scores == [0, 1, 2]
    assert job.query.prefix_ids  # prepared once, with the first call


async def test_a_refused_query_refuses_every_call_of_its_job(make_engine):
    engine = await make_engine()
    job = await engine.open_job(text_query("   "))  # opening does no work: the query is checked with the documents
    results = await asyncio.gather(job.add_documents(list(enumerate(text_docs("a")))),
                                   job.add_documents([(1, text_docs("b")[0])]), return_exceptions=True)
    for error in results:
        assert isinstance(error, InvalidInput)
        assert [v.field for v in error.violations] == ["query.parts[0].text"]
    with pytest.raises(InvalidInput):
        await job.add_documents([(2, text_docs("c")[0])])


async def test_refused_documents_leave_the_query_prepared_for_the_next_call(make_engine):
    engine = await make_engine()
    job = await engine.open_job(Query((TextPart("sofa"), ImagePart(noise_image(64, 64, seed=1)))))
    with pytest.raises(InvalidInput) as info:
        await job.add_documents([(0, Document("empty", (TextPart(""),)))])
    assert [v.field for v in info.value.violations] == ["documents[0].parts[0].text"]
    assert await job.add_documents([(1, text_docs("grey sofa")[0])])
    job.close()
    assert [s.index async for s in job.results()] == [1]
    assert job.stats.usage.images == 1  # the query's image, once


@pytest.mark.parametrize("query_has_image", [False, True])
async def test_the_first_documents_images_decode_while_a_text_query_is_prepared(make_engine, query_has_image):
    """A pair's photo starts decoding before its query's preparation, not after it; a query with
    an image of its own has that decoded first. Either way the scores are those of the request."""
    engine = await make_engine()
    pre = engine.preprocessor
    events: list[str] = []
    encode, prepare_query = pre.encode_image, pre.prepare_query
    photo = noise_image(40, 32, fmt="JPEG", seed=3)
    pre.encode_image = lambda part: (events.append("document image" if part.data == photo else "query image"),
                                     encode(part))[1]
    pre.prepare_query = lambda *args: (events.append("query"), prepare_query(*args))[1]
    parts = (ImagePart(noise_image(24, 24, fmt="PNG", seed=4)), TextPart("lamp")) if query_has_image else (
        TextPart("lamp"),)
    job = await engine.open_job(Query(parts))
    await job.add_documents([(0, Document("d", (ImagePart(photo), TextPart("a desk lamp"))))])
    job.close()
    scores = [s async for s in job.results()]
    assert len(scores) == 1
    if query_has_image:
        assert events.index("query") < events.index("query image") < events.index("document image")
    else:
        assert events.index("document image") < events.index("query")
