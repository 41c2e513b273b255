"""The pieces Explain occludes: words and phrases of a text, cells of a grid over an image, and
the copy of a part with one of them removed or masked.

Text fragments tile their text: each is a word (a segment, in Chinese) with the punctuation and
whitespace that follow it, and an opening bracket or quote goes with the word after it, so the
fragments' texts put together give the text back and a highlight covers every character.
Chinese (Han) runs are segmented by jieba, the usual Chinese word segmenter; everything else is
split into words at whitespace and punctuation, keeping "T-shirt", "don't" and "3.5" whole.
"""

# numpy's and Pillow's annotations leave reshape, copy and Image.open partially unknown: the
# pixel helpers below are checked strictly but for those three rules.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import functools
import logging
import re
import threading
import unicodedata
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from ..engine.config import ImageLimits
from ..engine.prompt.image_files import decode_image, image_key
from ..engine.types import ImagePart, Part, Picture, TextPart, grid_cells

Pixels = npt.NDArray[np.uint8]  # [height, width, 3]


@dataclass(frozen=True)
class Span:
    """[start, end) in code points of a part's text."""

    start: int
    end: int


@dataclass(frozen=True)
class Box:
    """A cell in an image's upright pixels."""

    x: int
    y: int
    width: int
    height: int


# ---- text -------------------------------------------------------------------------------
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_LETTER = rf"[^\W_{_HAN}]"  # a letter or digit of any script but Han
# A word keeps inner apostrophes and hyphens, and a decimal point or thousands comma between digits.
_TOKENS = re.compile(
    rf"(?P<han>[{_HAN}]+)|(?P<word>{_LETTER}+(?:(?:['’\-]|(?<=\d)[.,](?=\d)){_LETTER}+)*)|(?P<space>\s+)|(?P<other>.)",
    re.DOTALL,
)
_OPENING = ("Ps", "Pi")  # brackets and quotes that open: they go with the next word

_STRAIGHT_QUOTES = "\"'"

_jieba_lock = threading.Lock()


def _opens(text: str, at: int) -> bool:
    char = text[at]
    if char in _STRAIGHT_QUOTES:  # neither opening nor closing by category: read where it stands
        return (at == 0 or text[at - 1].isspace()) and at + 1 < len(text) and not text[at + 1].isspace()
    return unicodedata.category(char) in _OPENING


class _Segmenter(Protocol):  # what we use of jieba.Tokenizer (jieba ships no types)
    def cut(self, sentence: str, HMM: bool = True) -> Iterator[str]: ...  # jieba's name


@functools.cache
def _segmenter() -> _Segmenter:
    # Imported on first use: loading its dictionary takes about a second, and most text is not Chinese.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jieba 0.42 imports the deprecated pkg_resources
        import jieba  # pyright: ignore[reportMissingTypeStubs]

    jieba.setLogLevel(logging.WARNING)  # pyright: ignore[reportUnknownMemberType]
    tokenizer = jieba.Tokenizer()
    tokenizer.initialize()  # pyright: ignore[reportUnknownMemberType]
    return tokenizer  # pyright: ignore[reportReturnType]  # it has cut(sentence, HMM)


def _han_segments(run: str) -> list[tuple[int, int]]:
    with _jieba_lock:  # one dictionary, built once
        segmenter = _segmenter()
    out: list[tuple[int, int]] = []
    pos = 0
    for word in segmenter.cut(run, HMM=True):
        out.append((pos, pos + len(word)))
        pos += len(word)
    if pos != len(run):  # jieba gives back every character; anything else is a bug to surface
        raise RuntimeError(f"segmenter lost characters of {run!r}")
    return out


def _tokens(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) covering the text: kind is "word", "open" or "rest" (spaces, other marks)."""
    out: list[tuple[str, int, int]] = []
    for m in _TOKENS.finditer(text):
        kind, start, end = m.lastgroup, m.start(), m.end()
        if kind == "han":
            out += [("word", start + s, start + e) for s, e in _han_segments(m.group())]
        elif kind == "word":
            out.append(("word", start, end))
        elif kind == "other" and _opens(text, start):
            out.append(("open", start, end))
        else:
            out.append(("rest", start, end))
    return out


def split_text(text: str) -> list[Span]:
    """The text's words with what follows each, tiling the text; a text with no word is one span."""
    spans: list[list[int]] = []
    pending: int | None = None  # start of material that goes with the next word
    for kind, start, end in _tokens(text):
        if kind == "word":
            spans.append([start if pending is None else pending, end])
            pending = None
        elif pending is not None:
            continue
        elif kind == "open" or not spans:
            pending = start
        else:
            spans[-1][1] = end
    if pending is not None:
        if spans:
            spans[-1][1] = len(text)
        else:
            spans.append([pending, len(text)])
    return [Span(s, e) for s, e in spans]


def merge_spans(spans: Sequence[Span], count: int) -> list[Span]:
    """Adjacent spans joined into `count` phrases of as equal a number of spans as can be."""
    if count >= len(spans):
        return list(spans)
    if count < 1:
        raise ValueError("at least one phrase is needed")
    size, extra = divmod(len(spans), count)
    out: list[Span] = []
    at = 0
    for k in range(count):
        n = size + (k < extra)
        out.append(Span(spans[at].start, spans[at + n - 1].end))
        at += n
    return out


def share_budget(counts: Sequence[int], budget: int) -> list[int]:
    """How many fragments each text keeps so that together they fit `budget`: at least one each,
    the rest in proportion to how many each has (largest remainders first)."""
    total = sum(counts)
    if total <= budget:
        return list(counts)
    if budget < len(counts):
        raise ValueError(f"{len(counts)} texts cannot share {budget} fragments")
    shares = [max(1, budget * n // total) for n in counts]
    order = sorted(range(len(counts)), key=lambda i: -(budget * counts[i] / total - shares[i]))
    left = budget - sum(shares)
    while left > 0:
        grew = False
        for i in order:
            if left and shares[i] < counts[i]:
                shares[i] += 1
                left -= 1
                grew = True
        if not grew:
            break
    while sum(shares) > budget:  # the floor of one each can overshoot: take from the largest
        i = max(range(len(shares)), key=lambda j: shares[j])
        shares[i] -= 1
    return shares


def without_span(text: str, span: Span) -> str:
    """The text with the span removed. Spans carry the whitespace after them, so removing a text's
    last span also removes the whitespace left before it."""
    if span.end >= len(text):
        return text[: span.start].rstrip()
    return text[: span.start] + text[span.end :]


def parts_without(parts: Sequence[Part], index: int, replacement: Part | None) -> tuple[Part, ...]:
    """The parts with parts[index] replaced, or left out when `replacement` is None."""
    return tuple(
        p if k != index else replacement for k, p in enumerate(parts) if k != index or replacement is not None
    )  # pyright: ignore[reportReturnType]  # None is filtered out: it is only kept when not None


def text_variant(parts: Sequence[Part], index: int, span: Span) -> tuple[Part, ...]:
    part = parts[index]
    assert isinstance(part, TextPart)
    rest = without_span(part.text, span)
    return parts_without(parts, index, TextPart(rest) if rest.strip() else None)


# ---- images -----------------------------------------------------------------------------
def upright_rgb(data: bytes, limits: ImageLimits) -> Pixels:
    """The pixels the model sees, [height, width, 3] uint8: the engine's own decode (first frame,
    EXIF orientation applied, transparency on white), its bounds checked from the header first.
    (The engine's decode threads take a JPEG through torchvision only where it gives these pixels:
    `images.jpeg_decoder_agrees`.) Raises ImageRejected in the words a Rerank of the image would get."""
    return np.asarray(decode_image(data, limits))


def decoded_part(part: ImagePart, pixels: Pixels) -> ImagePart:
    """`part` with its `upright_rgb` pixels beside its bytes: the engine takes those rather than
    decode the bytes again, and keys the image as it keys the bytes."""
    return ImagePart(part.data, picture=Picture.decoded(pixels, image_key(part)))


def grid_boxes(width: int, height: int, grid: int) -> list[Box]:
    """grid x grid cells tiling the image, row by row (the engine's `grid_cells`)."""
    return [Box(*cell) for cell in grid_cells(width, height, grid)]


def mean_colour(pixels: Pixels) -> Pixels:
    """The picture's mean colour, rounded: from Pillow's per-band histograms, whose integer sums
    are exact (numpy's float64 mean of a 448x448 picture took 4.4 ms on the H200 host, this 0.4)."""
    counts = np.asarray(Image.fromarray(pixels, "RGB").histogram(), dtype=np.int64).reshape(3, 256)
    return np.rint(counts @ np.arange(256, dtype=np.int64) / (pixels.shape[0] * pixels.shape[1])).astype(np.uint8)


def masked_pictures(pixels: Pixels, base: bytes, boxes: Sequence[Box], colour: Pixels) -> list[Picture]:
    """The picture with each box in turn filled with `colour`, handed to the engine as pixels:
    exactly the original (the image part whose key is `base`) outside the box, which each says, so
    the vision tower computes the windows they share with the original once; nothing to encode or
    decode (a PNG of each cell took 3-18 ms to write and 2 ms to read back)."""
    return Picture.masked(pixels, base, [(box.x, box.y, box.width, box.height) for box in boxes], colour)


def image_variant(parts: Sequence[Part], index: int, picture: Picture) -> tuple[Part, ...]:
    return parts_without(parts, index, ImagePart(picture=picture))
