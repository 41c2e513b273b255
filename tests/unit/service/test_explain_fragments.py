"""Explain's fragments: words and Chinese segments tiling their text, phrases when over the
limit, grid cells tiling their image, and the occluded copies built from them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from lychee_grpc.engine.config import ImageLimits
from lychee_grpc.engine.errors import InvalidInput
from lychee_grpc.engine.prompt.images import decode_pixels
from lychee_grpc.service import fragments as fr
from lychee_grpc.service.explain import plan
from lychee_grpc.service.types import Document, ImagePart, Query, TextPart

from ...helpers import noise_image, png_declaring

LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=1 << 20)


def pieces(text: str) -> list[str]:
    return [text[s.start : s.end] for s in fr.split_text(text)]


def test_english_words_carry_the_whitespace_and_punctuation_after_them():
    assert pieces("retro denim jacket") == ["retro ", "denim ", "jacket"]
    assert pieces('Slim "fit" jeans, blue (dark)!') == ["Slim ", '"fit" ', "jeans, ", "blue ", "(dark)!"]


def test_words_keep_inner_apostrophes_hyphens_and_decimal_points():
    assert pieces("don't T-shirt 3.5cm 5,000 red,blue") == ["don't ", "T-shirt ", "3.5cm ", "5,000 ", "red,", "blue"]


def test_chinese_is_split_into_words_not_characters():
    assert pieces("复古牛仔外套") == ["复古", "牛仔", "外套"]
    assert pieces("同款沙发5000以内") == ["同款", "沙发", "5000", "以内"]


def test_chinese_punctuation_goes_with_the_segment_before_it_and_brackets_with_the_one_after():
    got = pieces("宽松显瘦，「新款」沙发")
    assert got[1] == "显瘦，"
    assert "「新款」" in got


def test_mixed_scripts_split_at_script_changes():
    got = pieces("ins风 复古牛仔外套 slim fit")
    assert got[:2] == ["ins", "风 "]
    assert got[-2:] == ["slim ", "fit"]
    assert all(len(p.strip()) > 0 for p in got)


@pytest.mark.parametrize("text", [
    "retro denim jacket", "  leading and trailing  ", "复古牛仔外套女春秋款ins风宽松显瘦，百搭 T-shirt 3.5cm",
    "!!!", "foo (", "（加厚）羽绒服 — 白鸭绒 90%", "emoji 👍 ok", "a\nb\tc",
])
def test_fragments_tile_their_text_in_code_points(text):
    spans = fr.split_text(text)
    assert spans[0].start == 0 and spans[-1].end == len(text)
    assert all(a.end == b.start for a, b in itertools.pairwise(spans))
    assert all(s.end > s.start for s in spans)
    assert "".join(text[s.start : s.end] for s in spans) == text


def test_merging_joins_adjacent_fragments_into_nearly_equal_phrases():
    text = "one two three four five six seven"
    merged = fr.merge_spans(fr.split_text(text), 3)
    assert [text[s.start : s.end] for s in merged] == ["one two three ", "four five ", "six seven"]


@pytest.mark.parametrize(("counts", "budget"), [([10, 3, 1, 40], 12), ([5, 5, 5], 3), ([2, 100], 10), ([1] * 7, 7)])
def test_the_budget_is_shared_with_at_least_one_fragment_per_text(counts, budget):
    shares = fr.share_budget(counts, budget)
    assert sum(shares) == budget
    assert all(1 <= s <= n for s, n in zip(shares, counts))


def test_removing_a_texts_last_fragment_removes_the_space_before_it():
    spans = fr.split_text("retro denim jacket")
    assert fr.without_span("retro denim jacket", spans[1]) == "retro jacket"
    assert fr.without_span("retro denim jacket", spans[2]) == "retro denim"
    assert fr.without_span("retro denim jacket", spans[0]) == "denim jacket"


@pytest.mark.parametrize(("width", "height", "grid"), [(64, 48, 4), (61, 37, 3), (3, 50, 4), (100, 1, 2)])
def test_grid_boxes_cover_the_image_exactly_once(width, height, grid):
    cover = np.zeros((height, width), dtype=int)
    boxes = fr.grid_boxes(width, height, grid)
    for b in boxes:
        assert b.width > 0 and b.height > 0
        cover[b.y : b.y + b.height, b.x : b.x + b.width] += 1
    assert (cover == 1).all()
    assert len(boxes) == min(grid, width) * min(grid, height)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_the_pixels_explain_masks_are_the_pixels_the_engine_decodes(fmt):
    data = noise_image(40, 30, fmt=fmt, seed=3)
    engine_pixels = decode_pixels(data, LIMITS, fast_jpeg=True).permute(1, 2, 0).numpy()
    assert np.array_equal(fr.upright_rgb(data, LIMITS), engine_pixels)


def test_a_masked_copy_differs_from_the_image_only_inside_its_box():
    pixels = fr.upright_rgb(noise_image(40, 30, fmt="JPEG", seed=2), LIMITS)
    box = fr.grid_boxes(40, 30, 2)[3]
    colour = fr.mean_colour(pixels)
    (picture,) = fr.masked_pictures(pixels, b"base", [box], colour)
    masked = picture.pixels
    assert (picture.base, picture.box) == (b"base", (box.x, box.y, box.width, box.height))
    inside = np.zeros(pixels.shape[:2], dtype=bool)
    inside[box.y : box.y + box.height, box.x : box.x + box.width] = True
    assert (masked[~inside] == pixels[~inside]).all()
    assert (masked[inside] == colour).all()
    assert colour.tolist() == np.rint(pixels.reshape(-1, 3).mean(0)).tolist()


@pytest.mark.parametrize("seed", range(6))
def test_the_mask_colour_is_the_pictures_mean_rounded(seed):
    rng = np.random.default_rng(seed)
    height, width = (int(x) for x in rng.integers(1, 300, 2))
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[: height // 2] //= 3  # not uniform: means away from 127.5
    expected = np.rint(pixels.reshape(-1, 3).mean(axis=0, dtype=np.float64)).astype(np.uint8)
    assert fr.mean_colour(pixels).tolist() == expected.tolist()


def test_plan_merges_text_into_phrases_to_fit_the_limit_and_drops_nothing():
    words = " ".join(f"w{i}" for i in range(40))
    doc = Document("d", (TextPart(words), ImagePart(noise_image(32, 32, seed=1)), TextPart("short tail")))
    occlusions = plan(Query((TextPart("q"),)), doc, grid=2, include_query=False, limit=10, limits=LIMITS).occlusions
    assert len(occlusions) == 10
    first = [o for o in occlusions if o.part_index == 0]
    assert "".join(o.text for o in first) == words  # phrases still cover every word
    assert sum(o.box is not None for o in occlusions) == 4


def test_plan_checks_an_image_against_the_engines_limits_before_decoding_it(monkeypatch):
    loaded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(1))
    doc = Document("d", (TextPart("a b"), ImagePart(png_declaring(5000, 5000))))
    with pytest.raises(InvalidInput) as err:
        plan(Query((TextPart("q"),)), doc, grid=2, include_query=False, limit=16, limits=LIMITS)
    assert [v.field for v in err.value.violations] == ["document.parts[1].image"]
    assert "5000x5000" in err.value.violations[0].description and not loaded


def test_plan_refuses_a_grid_whose_cells_do_not_fit_naming_grid_size():
    doc = Document("d", (TextPart("a b"), ImagePart(noise_image(32, 32, seed=1))))
    with pytest.raises(InvalidInput) as err:
        plan(Query((TextPart("q"),)), doc, grid=4, include_query=False, limit=16, limits=LIMITS)
    assert [v.field for v in err.value.violations] == ["grid_size"]


def test_plan_orders_query_fragments_first_and_builds_their_variants():
    query = Query((TextPart("复古牛仔外套"),))
    doc = Document("d", (TextPart("denim jacket"),))
    occlusions = plan(query, doc, grid=2, include_query=True, limit=64, limits=LIMITS).occlusions
    assert [(o.source, o.text) for o in occlusions] == [
        ("query", "复古"), ("query", "牛仔"), ("query", "外套"), ("document", "denim "), ("document", "jacket")]
    assert occlusions[1].parts == (TextPart("复古外套"),)
    assert occlusions[3].parts == (TextPart("jacket"),)


def test_a_lone_text_fragment_is_refused_since_nothing_would_be_left():
    with pytest.raises(InvalidInput) as err:
        plan(Query((TextPart("sofa"),)), Document("d", (TextPart("grey sofa"),)), 2, True, 64, LIMITS)
    assert [v.field for v in err.value.violations] == ["include_query"]
    with pytest.raises(InvalidInput) as err:
        plan(Query((TextPart("sofa"),)), Document("d", (TextPart("sofa"),)), 2, False, 64, LIMITS)
    assert [v.field for v in err.value.violations] == ["document"]


def test_a_text_part_left_blank_by_its_removal_is_left_out():
    doc = Document("d", (TextPart("sofa"), ImagePart(noise_image(16, 16, seed=1))))
    occlusions = plan(Query((TextPart("q"),)), doc, grid=1, include_query=False, limit=64, limits=LIMITS).occlusions
    (image,) = occlusions[0].parts
    assert isinstance(image, ImagePart) and image.data == doc.parts[1].data
