"""An image repeated within a request (Explain's variants, candidates sharing a product photo) is
decoded, normalized and run through the tower once, and every document carrying it scores as it
does alone."""

from __future__ import annotations

import pytest

from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.errors import InvalidInput
from lychee_grpc.engine.prompt.image_files import cheap_key
from lychee_grpc.engine.prompt.template import DEFAULT_INSTRUCTION
from lychee_grpc.engine.types import Document, ImagePart, Query, TextPart

from ...helpers import noise_image

QUERY = Query((TextPart("a red lamp"),))


def _documents(photo: bytes, other: bytes) -> list[tuple[int, Document]]:
    # Equal bytes in distinct objects, as a transport decodes each candidate's copy.
    return [(k, Document(str(k), (ImagePart(bytes(bytearray(photo))), TextPart(f"lamp {k}")))) for k in range(5)] + [
        (5, Document("5", (ImagePart(other), TextPart("lamp 5")))),
        (6, Document("6", (TextPart("lamp 6"), ImagePart(photo)))),
    ]


def _count_decodes(pre) -> list[int]:
    """The byte lengths of the images `pre` decodes from now on, one entry per decode."""
    decoded: list[int] = []
    encode = pre.encode_image
    pre.encode_image = lambda part: (decoded.append(len(part.data)), encode(part))[1]
    return decoded


async def test_an_image_repeated_across_documents_is_decoded_once(make_engine):
    engine = await make_engine()
    pre = engine.preprocessor
    decoded = _count_decodes(pre)
    photo, other = noise_image(48, 40, fmt="JPEG", seed=1), noise_image(48, 40, fmt="JPEG", seed=2)
    query = pre.prepare_query(QUERY, DEFAULT_INSTRUCTION)
    prepared = pre.prepare_documents(query, _documents(photo, other))
    assert sorted(decoded) == sorted([len(photo), len(other)])
    assert all(p.images == 1 for p in prepared)
    assert {id(p.segment.images[0]) for p in prepared} == {id(prepared[0].segment.images[0]),
                                                         id(prepared[5].segment.images[0])}


def _sharing_length_head_and_tail(a: bytes, b: bytes) -> tuple[bytes, bytes]:
    """JPEGs `a` and `b` made one length, with equal first and last 2 KB: a 2 KB APP15 segment after
    the start marker, then zeros after the end marker (decoders stop there)."""
    filler = b"\xff\xef" + (2 + 2048).to_bytes(2, "big") + bytes(2048)
    n = max(len(a), len(b))
    return a[:2] + filler + a[2:] + bytes(n - len(a) + 2048), b[:2] + filler + b[2:] + bytes(n - len(b) + 2048)


async def test_images_differing_only_in_the_middle_are_each_decoded(make_engine):
    engine = await make_engine()
    pre = engine.preprocessor
    decoded = _count_decodes(pre)
    photo, other = _sharing_length_head_and_tail(noise_image(48, 40, fmt="JPEG", seed=1),
                                                 noise_image(48, 40, fmt="JPEG", seed=2))
    assert photo != other and cheap_key(photo) == cheap_key(other)  # the cheap key collides
    query = pre.prepare_query(QUERY, DEFAULT_INSTRUCTION)
    prepared = pre.prepare_documents(query, _documents(photo, other))
    assert decoded == [len(photo)] * 2
    assert prepared[5].segment.images[0] is not prepared[0].segment.images[0]
    assert prepared[5].segment.images[0].key != prepared[0].segment.images[0].key


async def test_documents_sharing_an_image_score_as_each_does_alone(make_engine):
    engine = await make_engine()
    photo, other = noise_image(48, 40, fmt="JPEG", seed=3), noise_image(48, 40, fmt="PNG", seed=4)
    documents = [doc for _, doc in _documents(photo, other)]
    together = await score_documents(engine, QUERY, documents)
    assert together.stats.usage.images == len(documents)
    for doc, score in zip(documents, together.scores):
        engine.executor.vision_cache.clear()
        alone = (await score_documents(engine, QUERY, [doc])).scores[0]
        assert score.logit == pytest.approx(alone.logit, abs=2e-4), doc.id


async def test_a_repeated_bad_image_is_named_in_every_document_carrying_it(make_engine):
    engine = await make_engine()
    documents = [Document(str(k), (TextPart("x"), ImagePart(b"not an image"))) for k in range(3)]
    with pytest.raises(InvalidInput) as err:
        await score_documents(engine, QUERY, documents)
    assert [v.field for v in err.value.violations] == [f"documents[{k}].parts[1].image" for k in range(3)]
