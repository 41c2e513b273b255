"""Plain helpers shared by the tests (fixtures live in conftest.py): engine settings, image
bytes, request builders."""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image

from lychee_grpc.engine.api import EngineClient
from lychee_grpc.engine.config import EngineConfig, ImageLimits, TextLimits
from lychee_grpc.engine.stats import EngineStats
from lychee_grpc.engine.types import Document, ImagePart, Query, TextPart


def noise_image(width: int, height: int, fmt: str = "PNG", seed: int = 0) -> bytes:
    rng = random.Random(seed)
    img = Image.frombytes("RGB", (width, height), bytes(rng.randrange(256) for _ in range(width * height * 3)))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def solid_image(width: int, height: int, color=(200, 30, 30), fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt, **save)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but carries almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def text_query(text: str) -> Query:
    return Query((TextPart(text),))


def text_docs(*texts: str) -> list[Document]:
    return [Document(f"d{i}", (TextPart(t),)) for i, t in enumerate(texts)]


# Query/document shapes the product promises: text-text, image-text, text-image, mixed-mixed.
def pair_cases() -> dict[str, tuple[Query, list[Document]]]:
    img_a, img_b, img_c = noise_image(64, 96, seed=1), noise_image(112, 56, seed=2), noise_image(80, 80, seed=3)
    return {
        "text-text": (
            text_query("retro denim jacket"),
            text_docs("vintage wash blue jeans coat women", "organic green tea gift box", "denim jacket"),
        ),
        "text-image": (
            text_query("grey fabric sofa"),
            [Document("a", (ImagePart(img_a),)), Document("b", (ImagePart(img_b),))],
        ),
        "image-text": (
            Query((ImagePart(img_c),)),
            text_docs("three seater modern sofa", "running shoes men breathable"),
        ),
        "mixed-mixed": (
            Query((ImagePart(img_c), TextPart("same sofa under 5000"))),
            [
                Document("m0", (ImagePart(img_a), TextPart("grey sofa, 4999"), TextPart(" free delivery"))),
                Document("m1", (TextPart("sofa: "), ImagePart(img_b), TextPart("linen"), ImagePart(img_a))),
                Document("m2", (TextPart("wireless earbuds"),)),
            ],
        ),
    }


def engine_config(model: str, **overrides) -> EngineConfig:
    """Small limits for the tiny model; `overrides` set any other EngineConfig field."""
    base = dict(
        model=model,
        max_documents_per_request=150,
        text_limits=TextLimits(max_tokens_per_document=512, max_query_tokens=512, max_instruction_tokens=64),
        image_limits=ImageLimits(max_bytes=2 * 1024 * 1024, max_pixels=4_000_000),
        warmup=False,
    )
    base.update(overrides)
    return EngineConfig(**base)


def stats_of(engine: EngineClient) -> EngineStats:
    """The stats of an engine on one device (`stats()` gives one snapshot per device)."""
    (stats,) = engine.stats()
    return stats
