"""Explain end to end over a real loopback port on the tiny model: every attribution is the full
score minus the score of its occluded variant sent through Rerank on its own; the document's
variants are one job; limits and bad input are refused naming the field."""

from __future__ import annotations

import dataclasses
import io

import grpc
import numpy as np
import pytest
from PIL import Image

from lychee_grpc.client import image, text
from lychee_grpc.proto import lychee_pb2 as pb

from ..helpers import field_violations, noise_image

QUERY = pb.Query(parts=[text("复古 denim 外套")])
DOCUMENT = pb.Document(id="p", parts=[text("retro denim jacket, slim fit"), image(noise_image(64, 48, seed=11))])


def occluded(parts, f: pb.Fragment) -> list[pb.Part]:
    """The parts with the fragment removed (text: its span, and the space before it when it ends
    the text) or its cell filled with the image's mean colour; built here independently of the
    server's code."""
    out = list(parts)
    part = parts[f.part_index]
    if part.WhichOneof("content") == "text":
        t = part.text
        rest = t[: f.start] + t[f.end :] if f.end < len(t) else t[: f.start].rstrip()
        if rest.strip():
            out[f.part_index] = text(rest)
        else:
            del out[f.part_index]
        return out
    pixels = np.asarray(Image.open(io.BytesIO(part.image)).convert("RGB")).copy()
    mean = np.rint(pixels.reshape(-1, 3).mean(0)).astype(np.uint8)
    pixels[f.y : f.y + f.height, f.x : f.x + f.width] = mean
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    out[f.part_index] = image(buf.getvalue())
    return out


async def explain(client, **fields) -> pb.ExplainResponse:
    request = pb.ExplainRequest(**{"query": QUERY, "document": DOCUMENT, **fields})
    return await client.stub.Explain(request, timeout=120)


async def test_each_attribution_is_the_full_score_minus_its_variant_scored_alone(client):
    resp = await explain(client, grid_size=2, include_query=True)
    full = (await client.rerank(QUERY, [DOCUMENT])).results[0]
    assert resp.score == pytest.approx(full.score, abs=1e-4)
    assert resp.logit == pytest.approx(full.logit, abs=1e-3)
    sources = [f.source for f in resp.fragments]
    assert sources.count(pb.FRAGMENT_SOURCE_QUERY) == 3  # 复古 / denim / 外套
    assert sources.count(pb.FRAGMENT_SOURCE_DOCUMENT) == 5 + 4  # five words, 2x2 cells
    assert sources == sorted(sources)  # the query's first, then the document's
    for f in resp.fragments:
        if f.source == pb.FRAGMENT_SOURCE_QUERY:
            query, document = pb.Query(parts=occluded(QUERY.parts, f)), DOCUMENT
        else:
            query, document = QUERY, pb.Document(id="p", parts=occluded(DOCUMENT.parts, f))
        alone = (await client.rerank(query, [document])).results[0].score
        assert f.occluded_score == pytest.approx(alone, abs=1e-4), f
        assert f.attribution == pytest.approx(full.score - alone, abs=1e-4), f


async def test_query_and_document_cells_keep_their_places_and_score_as_alone(client):
    query = pb.Query(parts=[text("denim 外套"), image(noise_image(40, 30, seed=21))])
    document = pb.Document(id="p", parts=[image(noise_image(48, 40, seed=22)), text("retro denim jacket")])
    resp = await explain(client, query=query, document=document, grid_size=2, include_query=True)
    assert [(f.source, f.part_index, f.text or (f.x, f.y)) for f in resp.fragments] == [
        (pb.FRAGMENT_SOURCE_QUERY, 0, "denim "), (pb.FRAGMENT_SOURCE_QUERY, 0, "外套"),
        *[(pb.FRAGMENT_SOURCE_QUERY, 1, xy) for xy in [(0, 0), (20, 0), (0, 15), (20, 15)]],
        *[(pb.FRAGMENT_SOURCE_DOCUMENT, 0, xy) for xy in [(0, 0), (24, 0), (0, 20), (24, 20)]],
        (pb.FRAGMENT_SOURCE_DOCUMENT, 1, "retro "), (pb.FRAGMENT_SOURCE_DOCUMENT, 1, "denim "),
        (pb.FRAGMENT_SOURCE_DOCUMENT, 1, "jacket")]
    for f in resp.fragments:
        if f.source == pb.FRAGMENT_SOURCE_QUERY:
            pair = pb.Query(parts=occluded(query.parts, f)), document
        else:
            pair = query, pb.Document(id="p", parts=occluded(document.parts, f))
        alone = (await client.rerank(pair[0], [pair[1]])).results[0].score
        assert f.occluded_score == pytest.approx(alone, abs=1e-4), f


async def test_word_fragments_after_an_image_share_it_and_still_score_as_alone(client):
    photo = image(noise_image(224, 224, seed=12))  # 64 image tokens on the tiny model
    title = text("retro denim jacket, slim fit")
    image_first = pb.Document(id="p", parts=[photo, title])
    resp = await explain(client, document=image_first, grid_size=2)
    words = [f for f in resp.fragments if f.part_index == 1]
    assert len(words) == 5
    for f in words:
        document = pb.Document(id="p", parts=occluded(image_first.parts, f))
        alone = (await client.rerank(QUERY, [document])).results[0].score
        assert f.occluded_score == pytest.approx(alone, abs=1e-4), f
    # The same tokens with the title first: each word's variant then computes its own image.
    title_first = await explain(client, document=pb.Document(id="p", parts=[title, photo]), grid_size=2)
    assert resp.usage.prompt_tokens == title_first.usage.prompt_tokens
    # The five word variants (one batch, behind the full document's) computed the image's 64 tokens once.
    assert resp.usage.computed_tokens <= title_first.usage.computed_tokens - 4 * 64


async def test_text_fragments_name_their_text_and_offsets_and_cells_their_box(client):
    resp = await explain(client, grid_size=2)
    words = [f for f in resp.fragments if f.part_index == 0]
    assert [f.text for f in words] == ["retro ", "denim ", "jacket, ", "slim ", "fit"]
    assert all(DOCUMENT.parts[0].text[f.start : f.end] == f.text for f in words)
    cells = [(f.x, f.y, f.width, f.height) for f in resp.fragments if f.part_index == 1]
    assert cells == [(0, 0, 32, 24), (32, 0, 32, 24), (0, 24, 32, 24), (32, 24, 32, 24)]


class CountingJob:
    def __init__(self, job, added: list[int]):
        self._job, self.added = job, added

    async def add_documents(self, documents) -> list[int]:
        self.added.append(len(documents))
        return await self._job.add_documents(documents)

    def __getattr__(self, name):
        return getattr(self._job, name)


class CountingEngine:
    """The server's engine client, recording each job and the documents added to it."""

    def __init__(self, inner):
        self.inner, self.jobs = inner, []

    async def open_job(self, *args, **kwargs):
        added: list[int] = []
        self.jobs.append(added)
        return CountingJob(await self.inner.open_job(*args, **kwargs), added)

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def test_the_full_document_and_its_variants_are_added_together_as_one_job(server, client):
    counting = CountingEngine(server.service.engine)
    server.service.attach(counting)
    try:
        resp = await explain(client, grid_size=2, include_query=True)
    finally:
        server.service.attach(counting.inner)
    of_query = sum(f.source == pb.FRAGMENT_SOURCE_QUERY for f in resp.fragments)
    of_document = len(resp.fragments) - of_query
    # The full pair and every variant, in one call: one batch. Sending the text variants first, while
    # the cells were masked, measured 3% slower on an H200 (a second LM pass; bench/RESULTS.md).
    assert counting.jobs[0] == [1 + of_document]
    assert counting.jobs[1:] == [[1]] * of_query  # a query variant cannot share the prefix
    assert resp.usage.computed_tokens < resp.usage.prompt_tokens  # the document job's prefix ran once
    assert resp.usage.images == 1 + 4 + of_query + 5  # the original in every variant but its masked copies
    assert resp.timings.total_ms >= resp.timings.inference_ms > 0
    expected_band = (pb.RELEVANCE_BAND_STRONG if resp.score >= 0.75 else
                     pb.RELEVANCE_BAND_MEDIUM if resp.score >= 0.55 else pb.RELEVANCE_BAND_WEAK)
    assert resp.band == expected_band


async def test_limits_are_reported_and_a_grid_over_them_is_refused_naming_grid_size(server, client):
    info = await client.model_info()
    assert info.limits.max_explain_fragments == server.service.config.max_explain_fragments == 256
    assert info.limits.explain_grid_size == server.service.config.explain_grid_size == 4
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await explain(client, grid_size=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(err.value)] == ["grid_size"]

    config = server.service.config
    server.service.config = dataclasses.replace(config, max_explain_fragments=6)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await explain(client, grid_size=4)  # 16 cells cannot be merged into 6 fragments
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in field_violations(err.value)] == ["grid_size"]
        words = " ".join(f"word{i}" for i in range(20))
        resp = await client.stub.Explain(pb.ExplainRequest(query=QUERY, document=pb.Document(parts=[text(words)])))
        assert len(resp.fragments) == 6  # phrases, never a dropped word
        assert "".join(f.text for f in resp.fragments) == words
    finally:
        server.service.config = config


TRUNCATED = noise_image(64, 48, seed=4)[:400]  # its header is whole: refused only once decoded


@pytest.mark.parametrize(("first", "data"), [(text("denim jacket"), b"not an image"), (text(" "), b"not an image"),
                                             (text("denim jacket"), TRUNCATED), (text(" "), TRUNCATED)],
                         ids=["alone", "beside an empty text", "truncated", "truncated beside an empty text"])
async def test_a_bad_image_is_refused_as_rerank_refuses_it_naming_every_document_field(client, first, data):
    document = pb.Document(parts=[first, image(data)])
    with pytest.raises(grpc.aio.AioRpcError) as explained:
        await explain(client, document=document)
    with pytest.raises(grpc.aio.AioRpcError) as reranked:
        await client.rerank(QUERY, [document])
    assert explained.value.code() == reranked.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    named = field_violations(explained.value)
    assert "document.parts[1].image" in [field for field, _ in named]
    assert [(f.replace("document", "documents[0]", 1), d) for f, d in named] == field_violations(reranked.value)
    assert len(named) == (1 if first.text.strip() else 2)


async def test_a_document_of_one_word_or_no_part_is_refused_naming_the_document(client):
    for document, expected in [(pb.Document(parts=[text("sofa")]), "document"),
                               (pb.Document(), "document.parts"),
                               (pb.Document(parts=[pb.Part()]), "document.parts[0]")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await explain(client, document=document)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in field_violations(err.value)] == [expected]
