"""What preparation hands the scheduler and the executor: encoded images, token segments, a
request's prepared query and each prepared document, and the prefetch hand-off."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import template

# Prefetch in about this many chunks per request, of at least this many images: the first chunk
# reaches the GPU after a few ms of decoding, and the tower still runs on large batches.
PREFETCH_CHUNKS = 4
PREFETCH_MIN_IMAGES = 16


def prefetch_chunk(images: int) -> int:
    """Images per prefetch chunk for a call with `images` to decode: up to PREFETCH_CHUNKS equal
    chunks of at least PREFETCH_MIN_IMAGES, so that no chunk is a small remainder (16, 16, 16, 2
    for a worker's 50 images ran a whole tower pass, and its launches, for two)."""
    chunks = max(1, min(PREFETCH_CHUNKS, images // PREFETCH_MIN_IMAGES))
    return max(1, -(-images // chunks))


@dataclass
class Prefetch:
    """Starts the vision tower on chunks of a request's decoded images (the engine runs them on
    the GPU thread ahead of the request's batch) while its other images decode and its text is
    tokenized. `budget` bounds the image tokens whose embeddings wait on the GPU for their batch."""

    start: Callable[[list[EncodedImage]], None]
    budget: int


@dataclass(frozen=True)
class Edit:
    """What an image has in common with another: outside `box` (x, y, width, height) of its
    decoded pixels (`size`: height, width) they are those of the image whose key is `base`."""

    base: bytes
    box: tuple[int, int, int, int]
    size: tuple[int, int]


@dataclass(frozen=True)
class Fill:
    """A box (x, y, width, height) of an image's decoded pixels to fill with `colour` (RGB) when
    its pixels are made: a masked picture's `picture` is its base's pixels, shared by its cells,
    and each cell's box is filled where the batch of pixels is made (on the GPU where that is)."""

    box: tuple[int, int, int, int]
    colour: tuple[int, int, int]


@dataclass
class EncodedImage:
    """One image ready for the vision tower. `picture` is None when the vision cache held its
    output at preparation time; `decode()` gives it again if that output was evicted since."""

    key: bytes
    grid_thw: tuple[int, int, int]
    tokens: int
    pixel_values: torch.Tensor | None
    decode: Callable[[], torch.Tensor]
    embedding: torch.Tensor | None = None  # the tower's output, when computed ahead of the batch
    # The decoded picture (uint8 [3, h, w], on the host) until its pixels are computed, in its
    # batch or a prefetch chunk: a request's pixels never wait on the GPU all at once.
    picture: torch.Tensor | None = None
    edit: Edit | None = None  # the vision tower shares windows with its base (vision/sharing.py)
    fill: Fill | None = None  # filled into `picture` when its pixels are made (a masked picture)


@dataclass
class Segment:
    """Tokens the model computes for one sequence, with their positions and images."""

    ids: torch.Tensor  # [n] long
    positions: torch.Tensor  # [3, n] long
    images: list[EncodedImage]

    def __len__(self) -> int:
        return int(self.ids.numel())


@dataclass
class PreparedQuery:
    instruction: str
    prefix: Segment  # the shared tokens, computed once per request
    prefix_ids: list[int]
    query_pieces: list[template.Piece]  # one pad marker per image (expanded after tokenization)
    images: list[EncodedImage]
    prepare_ms: float = 0.0
    # All tokens of the prefix text, when no BPE merge can cross from it into a document.
    clean_boundary_ids: list[int] | None = None
    # The position of a document segment's first token (the prefix's last token, left to the
    # document: a text token, so its three axes are equal). Its index unless the query has images.
    first_position: int = 0


@dataclass
class PreparedDocument:
    index: int
    id: str
    segment: Segment  # after the shared prefix, or the whole prompt when uses_prefix is False
    uses_prefix: bool
    prompt_tokens: int
    images: int
    cached_images: int
    truncated: bool = False  # the end of its text was cut to fit the token limit
    # When truncated: the kept text of each of its text parts, in order ("" where all was cut).
    kept_text: tuple[str, ...] | None = None
