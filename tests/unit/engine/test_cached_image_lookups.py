"""Images a request likely has cached (seen before, their vision output held) are looked up on
the preparing thread (up to INLINE_LOOKUP_BYTES; larger ones in decode tasks): they come back as
cached with the scores a fresh computation gives, an image mispredicted as cached (its cheap key
collides with a cached one's, or its output was evicted) is decoded, and an error looking one up
names its own image only. An image part's digest is computed once, whoever asks first: the
engine's content key and the service's pair-score key."""

from __future__ import annotations

import hashlib

import pytest

from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.errors import InvalidInput
from lychee_grpc.engine.prompt.image_files import ImageRejected, cheap_key, content_key, image_key
from lychee_grpc.engine.prompt.prepare import INLINE_LOOKUP_BYTES
from lychee_grpc.engine.types import Document, ImagePart, Query, TextPart
from lychee_grpc.service.score_cache import PairKeys

from ...helpers import noise_image
from .test_repeated_images import _sharing_length_head_and_tail

QUERY = Query((TextPart("a red lamp"),))


def _docs(photos: list[bytes]) -> list[Document]:
    # New part objects (and bytes objects) per call, as a transport makes them.
    return [Document(str(k), (ImagePart(bytes(bytearray(p))), TextPart(f"lamp {k}"))) for k, p in enumerate(photos)]


def _photos(n: int) -> list[bytes]:
    return [noise_image(28 + 4 * (k % 3), 28, fmt="JPEG", seed=k) for k in range(n)]


def _large_photo() -> bytes:
    photo = noise_image(168, 168, fmt="PNG", seed=99)
    assert len(photo) > INLINE_LOOKUP_BYTES  # looked up in a decode task
    return photo


def _scores(ranking) -> dict[int, float]:
    return {s.index: s.logit for s in ranking.scores}


async def test_a_repeat_requests_images_read_as_cached_and_score_the_same(make_engine):
    engine = await make_engine(prefetch_image_tokens=0)
    photos = [*_photos(10), _large_photo()]
    first = await score_documents(engine, QUERY, _docs(photos))
    decoded: list[int] = []
    decode = engine.preprocessor._picture
    engine.preprocessor._picture = lambda part: (decoded.append(1), decode(part))[1]
    again = await score_documents(engine, QUERY, _docs(photos))
    assert decoded == [] and again.stats.usage.cached_images == len(photos)
    assert _scores(again) == _scores(first)


async def test_an_image_whose_cheap_key_collides_with_a_cached_one_is_decoded(make_engine):
    engine = await make_engine(prefetch_image_tokens=0)
    photo, other = _sharing_length_head_and_tail(noise_image(48, 40, fmt="JPEG", seed=1),
                                                 noise_image(48, 40, fmt="JPEG", seed=2))
    assert cheap_key(photo) == cheap_key(other)
    alone = _scores(await score_documents(engine, QUERY, _docs([other])))
    engine.executor.vision_cache.clear()
    await score_documents(engine, QUERY, _docs([photo]))  # `photo` cached under the shared cheap key
    got = await score_documents(engine, QUERY, _docs([other]))
    assert got.stats.usage.cached_images == 0
    assert _scores(got) == pytest.approx(alone, abs=1e-6)


async def test_a_seen_image_evicted_from_the_vision_cache_is_decoded_again(make_engine):
    engine = await make_engine(prefetch_image_tokens=0)
    photos = _photos(5)
    first = await score_documents(engine, QUERY, _docs(photos))
    engine.executor.vision_cache.clear()
    again = await score_documents(engine, QUERY, _docs(photos))
    assert again.stats.usage.cached_images == 0
    assert _scores(again) == pytest.approx(_scores(first), abs=1e-6)


async def test_an_error_looking_up_a_cached_image_names_that_image_only(make_engine):
    engine = await make_engine(prefetch_image_tokens=0)
    photos = [*_photos(8), _large_photo()]
    await score_documents(engine, QUERY, _docs(photos))
    pre = engine.preprocessor
    encode = pre.encode_image
    bad = {content_key(photos[4]), content_key(photos[8])}

    def failing(part):
        if image_key(part) in bad:
            raise ImageRejected("refused for the test")
        return encode(part)

    pre.encode_image = failing
    with pytest.raises(InvalidInput) as err:
        await score_documents(engine, QUERY, _docs(photos))
    assert [(v.field, v.description) for v in err.value.violations] == [
        ("documents[4].parts[0].image", "refused for the test"),
        ("documents[8].parts[0].image", "refused for the test")]


def test_an_image_parts_digest_is_computed_once_for_the_engine_and_the_score_cache(monkeypatch):
    calls: list[int] = []
    sha256 = hashlib.sha256

    def counting(data=b"", *args, **kwargs):
        calls.append(len(data))
        return sha256(data, *args, **kwargs)

    photo = noise_image(40, 40, fmt="JPEG", seed=9)
    part = ImagePart(photo)
    keys = PairKeys(b"model", "NONE", 512, "instruction", QUERY)
    monkeypatch.setattr(hashlib, "sha256", counting)
    service_key = keys.of(Document("d", (part, TextPart("a lamp"))))
    engine_key = image_key(part)
    assert calls.count(len(photo)) == 1
    assert engine_key == sha256(photo).digest()[:16] == content_key(photo)
    assert service_key == keys.of(Document("d", (ImagePart(bytes(bytearray(photo))), TextPart("a lamp"))))
    assert ImagePart(photo) == part  # the digest is no field: parts compare by their bytes


async def test_a_warm_request_does_not_wait_behind_other_requests_decodes(make_engine):
    """Its documents' runs are tokenized in a decode task when one is free; with every decode
    thread busy (another request's images), on the preparing thread instead."""
    import threading
    import time

    from lychee_grpc.engine.prompt.template import DEFAULT_INSTRUCTION

    engine = await make_engine(prefetch_image_tokens=0)
    photos = _photos(6)
    await score_documents(engine, QUERY, _docs(photos))
    pre = engine.preprocessor
    query = pre.prepare_query(QUERY, DEFAULT_INSTRUCTION)
    expected = pre.prepare_documents(query, list(enumerate(_docs(photos))))
    release = threading.Event()
    blockers = [pre._decoder.submit(release.wait, 30) for _ in range(engine.config.preprocess_threads)]
    try:
        started = time.perf_counter()
        got = pre.prepare_documents(query, list(enumerate(_docs(photos))))
        took = time.perf_counter() - started
    finally:
        release.set()
    assert all(b.result() for b in blockers)
    assert took < 10
    assert [(d.segment.ids.tolist(), d.segment.positions.tolist()) for d in got] == [
        (d.segment.ids.tolist(), d.segment.positions.tolist()) for d in expected]
