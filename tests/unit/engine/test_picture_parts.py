"""An image given as decoded pixels (a Picture, as Explain's masked cells are) is the image its
bytes decode to: the same score, the same checks, and equal only to the same pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.config import ImageLimits
from lychee_grpc.engine.errors import InvalidInput
from lychee_grpc.engine.prompt.image_files import image_key
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


async def test_masked_cells_are_taken_without_a_copy_and_their_boxes_filled_where_pixels_are_made(make_engine):
    """Explain's cells reach the engine as their base's pixels: each cell's picture is that memory
    (no copy per cell), and its pixels, made for the tower with the box filled there, equal those
    of the same pixels given whole; so do the cells' scores, in one call with their base (within
    float32's rounding)."""
    engine = await make_engine()
    pre = engine.preprocessor
    data = noise_image(84, 56, fmt="PNG", seed=5)  # 84 wide, 56 high
    source = _pixels(data).copy()
    colour = np.array([200, 10, 90], dtype=np.uint8)
    cells = Picture.masked(source, b"base", [(0, 0, 28, 28), (28, 28, 56, 28), (10, 3, 5, 50)], colour)
    taken = [pre.encode_image(ImagePart(picture=cell))[0] for cell in cells]
    whole = [pre.encode_image(ImagePart(picture=Picture.of(cell.pixels)))[0] for cell in cells]
    assert all(image.picture is not None and image.picture.data_ptr() == source.ctypes.data for image in taken)
    pre.fill_pixels(taken + whole)
    for a, b in zip(taken, whole):
        assert a.pixel_values is not None and b.pixel_values is not None
        assert torch.equal(a.pixel_values, b.pixel_values)
    assert np.array_equal(source, _pixels(data))  # the shared source is never written

    query = Query((TextPart("a lamp"),))
    docs = [Document(str(i), (ImagePart(picture=cell), TextPart("lamp"))) for i, cell in enumerate(cells)]
    copies = [Document(str(i), (ImagePart(picture=Picture.of(cell.pixels)), TextPart("lamp")))
              for i, cell in enumerate(cells)]
    masked = await score_documents(engine, query, [Document("b", (ImagePart(data), TextPart("lamp"))), *docs])
    given = await score_documents(engine, query, copies)
    # With their base in the call the tower shares its windows with them (vision/sharing.py): the
    # same arithmetic in another order, so equal within float32's rounding here.
    assert [s.logit for s in sorted(masked.scores, key=lambda s: s.index)][1:] == pytest.approx(
        [s.logit for s in sorted(given.scores, key=lambda s: s.index)], rel=1e-5, abs=1e-5)


async def test_bytes_given_with_their_decoded_pixels_are_taken_as_given_and_keyed_as_the_bytes(make_engine):
    """Explain hands on the photo it decoded for its masked cells: the engine takes that memory
    (no decode, and on CUDA no pinned copy, which it used to make), scores it as the bytes, and
    keys it as the bytes (a Rerank of the bytes then finds its vision output cached)."""
    engine = await make_engine()
    data = noise_image(61, 47, fmt="JPEG", seed=12)
    pixels = _pixels(data).copy()
    given = ImagePart(data, picture=Picture.decoded(pixels, image_key(ImagePart(data))))
    taken, _ = engine.preprocessor.encode_image(given)
    assert taken.picture is not None and taken.picture.data_ptr() == pixels.ctypes.data
    assert taken.key == engine.preprocessor.encode_image(ImagePart(data))[0].key

    query = Query((TextPart("a red lamp"),))
    by_pixels = await score_documents(engine, query, [Document("p", (given, TextPart("lamp")))])
    by_bytes = await score_documents(engine, query, [Document("b", (ImagePart(data), TextPart("lamp")))])
    assert by_bytes.scores[0].logit == by_pixels.scores[0].logit
    assert (by_pixels.stats.usage.cached_images, by_bytes.stats.usage.cached_images) == (0, 1)
