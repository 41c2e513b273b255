"""Domain objects shared by the engine and the transport."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True, eq=False, repr=False)
class Picture:
    """Decoded pixels given in place of an image's bytes, or beside them: [height, width, 3] uint8
    RGB, upright, as the engine decodes bytes. Made in the process that scores them (Explain's
    masked cells, and the photo it decoded to make them), so nothing encodes or decodes them; a
    transport never makes one. Equal when their keys are: two pictures of one key have the same
    pixels. Built by `Picture.of` (a key of the pixels), `Picture.decoded` (the key of the bytes
    they were decoded from) or `Picture.masked` (a key of what they were made from); what they hold
    is not to be changed afterwards.

    `base` and `box` (x, y, width, height), set by `masked` only: outside the box these pixels are
    those of the image whose key is `base` (an image part's `image_key`). The vision tower then
    computes the windows they share once, where both are in one call (vision/sharing.py). A masked
    picture holds the base's pixels (`source`, shared by all its cells) and the colour of its box:
    its own pixels are made where they are used (the engine fills the box in its copy on the GPU;
    `copy_into` writes them anywhere else)."""

    source: np.ndarray  # the pixels; or (with `colour`) the base's, before the box is filled
    key: bytes  # a digest of the size and the pixels, or (`masked`) of what they were made from
    base: bytes | None = None
    box: tuple[int, int, int, int] | None = None
    colour: np.ndarray | None = None  # [3] uint8: what fills the box (`masked`)

    @classmethod
    def of(cls, pixels: np.ndarray) -> Picture:
        pixels = _checked(pixels)
        # SHA-256 runs on the CPU's SHA instructions where it has them: 0.47 ms for 448x448 pixels
        # against BLAKE2b's 0.83 here; hashlib releases the GIL over large buffers.
        digest = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}:".encode())
        digest.update(pixels.data)
        return cls(pixels, digest.digest()[:16])

    @classmethod
    def decoded(cls, pixels: np.ndarray, key: bytes) -> Picture:
        """`pixels`, decoded by the engine's decoder from the image bytes whose `image_key` is `key`:
        given with those bytes, the engine takes them in place of decoding the bytes again, and
        keys what it computes from them as it keys those bytes'. Explain decodes its pair's photo
        for the masked cells; handing those pixels on saved the engine's decode of the same photo
        (~2.5 ms on a decode thread before the tower could start, on the H200 host)."""
        pixels = _checked(pixels)
        pixels.flags.writeable = False  # shared with the masked cells made from it
        return cls(pixels, key)

    @classmethod
    def masked(cls, pixels: np.ndarray, base: bytes, boxes: Sequence[tuple[int, int, int, int]], colour: np.ndarray
               ) -> list[Picture]:
        """`pixels`, the decoded pixels of the image whose key is `base`, with each of `boxes` (x, y,
        width, height) in turn filled with `colour`. Made here so that what `base` and `box` claim
        holds. A key is a digest of what the picture was made from (the base's key, the size, the
        box and the colour), which fix its pixels: Explain makes 16 per image on its critical path,
        and hashing 600 KB of pixels took ~0.5 ms each. Nothing is copied here: the engine copies
        the shared pixels to the GPU once and fills each box there (16 copies made here first, into
        fresh memory on one thread, took Explain's plan on the H200 host from ~6 to 7-9 ms;
        bench/RESULTS.md)."""
        pixels = _checked(pixels)
        pixels.flags.writeable = False  # shared by every cell
        fill = np.asarray(colour, dtype=np.uint8).reshape(3).copy()
        height, width = pixels.shape[:2]
        made = []
        for x, y, w, h in boxes:
            if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
                raise ValueError(f"box {(x, y, w, h)} is not inside a {width}x{height} picture")
            key = hashlib.sha256(f"masked {height}x{width} {x},{y},{w},{h} {fill.tolist()}:".encode() + base)
            made.append(cls(pixels, key.digest()[:16], base=base, box=(x, y, w, h), colour=fill))
        return made

    @property
    def pixels(self) -> np.ndarray:
        """The picture's pixels: for a masked picture, a new copy each time (`copy_into` writes them
        where they are needed)."""
        if self.colour is None:
            return self.source
        out = np.empty_like(self.source)
        self.copy_into(out)
        return out

    def copy_into(self, out: np.ndarray) -> None:
        """Writes the pixels into `out` ([height, width, 3] uint8): one copy."""
        np.copyto(out, self.source)
        if self.colour is not None and self.box is not None:
            x, y, w, h = self.box
            out[y : y + h, x : x + w] = self.colour

    @property
    def height(self) -> int:
        return int(self.source.shape[0])

    @property
    def width(self) -> int:
        return int(self.source.shape[1])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Picture) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Picture({self.width}x{self.height}, {self.key.hex()[:12]})"


def grid_cells(width: int, height: int, grid: int) -> list[tuple[int, int, int, int]]:
    """grid x grid cells (x, y, width, height) tiling a width x height picture, row by row; a
    picture narrower (or lower) than the grid gets one column (row) per pixel. Explain masks these
    one at a time, and the engine captures the vision tower of a picture with its masked cells."""
    cols, rows = min(grid, width), min(grid, height)
    xs = [width * i // cols for i in range(cols + 1)]
    ys = [height * j // rows for j in range(rows + 1)]
    return [(xs[i], ys[j], xs[i + 1] - xs[i], ys[j + 1] - ys[j]) for j in range(rows) for i in range(cols)]


def _checked(pixels: np.ndarray) -> np.ndarray:
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"a picture is [height, width, 3] uint8, not {pixels.dtype} {list(pixels.shape)}")
    return pixels


@dataclass(frozen=True)
class ImagePart:
    data: bytes = b""  # JPEG, PNG, WebP or GIF bytes, as a transport receives them
    picture: Picture | None = None  # its decoded pixels, in place of the bytes or beside them (in-process callers)

    @property
    def digest(self) -> bytes:
        """SHA-256 of `data`, computed once per part: the engine's content key and the service's
        pair-score key both read it, so a request's image is hashed once, not once per layer.
        SHA-256 runs on the CPU's SHA instructions (1.3-1.4 GB/s here against BLAKE2b's 0.5-0.7),
        and hashlib releases the GIL over large buffers. Not a `cached_property`: on Python 3.11
        that holds one lock for every instance while it computes, which would serialise the decode
        threads' hashing. Two threads asking at once both compute it, to the same bytes."""
        digest = self.__dict__.get("_digest")
        if digest is None:
            digest = hashlib.sha256(self.data).digest()
            object.__setattr__(self, "_digest", digest)
        return digest


Part = TextPart | ImagePart


@dataclass(frozen=True)
class Query:
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class Document:
    id: str
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class Score:
    """One document's result. `index` is its position in the request (or stream)."""

    index: int
    id: str
    score: float
    logit: float
    truncated: bool = False  # the document's text was cut to fit the token limit
    cached: bool = False  # answered from the service's pair-score cache (never set by the engine)


@dataclass
class Usage:
    prompt_tokens: int = 0
    computed_tokens: int = 0
    images: int = 0
    cached_images: int = 0
    # Set by the service: documents answered from its pair-score cache, and documents answered by
    # an identical document's computation (repeated in the request, or queued for another).
    cached_documents: int = 0
    deduplicated_documents: int = 0


@dataclass
class Timings:
    preprocess_ms: float = 0.0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0


@dataclass
class RequestStats:
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    # (start, end) time.perf_counter() of each model batch that held the request's documents.
    batches: list[tuple[float, float]] = field(default_factory=list)
