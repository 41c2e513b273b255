"""An image given as decoded pixels (a Picture, as Explain's masked cells are) is the image its
bytes decode to: the same score, the same checks, and equal only to the same pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.config import ImageLimits
from lychee_grpc.engine.errors import InvalidInput
from lychee_grpc.engine.prompt.images import decode_pixels, part_pixels
from lychee_grpc.engine.types import Document, ImagePart, Picture, Query, TextPart

from ...helpers import noise_image


def _pixels(data: bytes) -> np.ndarray:
    return decode_pixels(data, ImageLimits()).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
async def test_a_picture_scores_exactly_as_the_bytes_it_was_decoded_from(make_engine, fmt):
    engine = await make_engine()
    data = noise_image(61, 47, fmt=fmt, seed=11)
    query = Query((TextPart("a red lamp"),))
    as_bytes = Document("b", (ImagePart(data), TextPart("lamp")))
    as_pixels = Document("p", (ImagePart(picture=Picture.of(_pixels(data))), TextPart("lamp")))
    by_bytes = (await score_documents(engine, query, [as_bytes])).scores[0]
    by_pixels = await score_documents(engine, query, [as_pixels])
    assert by_pixels.scores[0].logit == by_bytes.logit
    assert by_pixels.stats.usage.images == 1


async def test_a_picture_over_the_pixel_limit_is_refused_naming_its_part(make_engine):
    engine = await make_engine(image_limits=ImageLimits(max_pixels=1000))
    picture = Picture.of(np.zeros((40, 30, 3), dtype=np.uint8))
    document = Document("d", (TextPart("x"), ImagePart(picture=picture)))
    with pytest.raises(InvalidInput) as err:
        await score_documents(engine, Query((TextPart("q"),)), [document])
    assert [v.field for v in err.value.violations] == ["documents[0].parts[1].image"]
    assert "30x40 = 1200 pixels" in err.value.violations[0].description


def test_pictures_are_equal_by_their_pixels_and_size():
    a = np.arange(2 * 6 * 3, dtype=np.uint8).reshape(2, 6, 3)
    assert Picture.of(a) == Picture.of(a.copy()) and hash(Picture.of(a)) == hash(Picture.of(a.copy()))
    assert Picture.of(a) != Picture.of(a.reshape(6, 2, 3))  # the same bytes, another size
    b = a.copy()
    b[1, 5, 2] ^= 1
    assert Picture.of(a) != Picture.of(b)
    assert ImagePart(picture=Picture.of(a)) == ImagePart(picture=Picture.of(a.copy()))
    assert ImagePart(picture=Picture.of(a)) != ImagePart(b"")


def test_a_picture_must_be_height_width_rgb_bytes():
    with pytest.raises(ValueError, match="uint8"):
        Picture.of(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[4, 4\]"):
        Picture.of(np.zeros((4, 4), dtype=np.uint8))


@pytest.mark.parametrize("pin", [False, pytest.param(True, marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="pinned memory needs CUDA"))])
def test_the_pixels_the_engine_takes_from_a_masked_picture_are_its_own_and_its_source_stays(pin):
    source = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    kept = source.copy()
    cells = Picture.masked(source, b"base", [(4, 5, 6, 7), (0, 0, 30, 20)], np.array([9, 8, 7], dtype=np.uint8))
    for cell in cells:
        expected = kept.copy()
        x, y, w, h = cell.box
        expected[y : y + h, x : x + w] = [9, 8, 7]
        assert np.array_equal(cell.pixels, expected)
        got = part_pixels(ImagePart(picture=cell), ImageLimits(), pin=pin)
        assert got.is_pinned() == pin and torch.equal(got, torch.from_numpy(expected).permute(2, 0, 1))
    assert np.array_equal(source, kept) and not source.flags.writeable  # one source, shared, never written
