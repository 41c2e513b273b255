"""The benchmark's requests, seeded: T100 (a query and 100 product titles of 48-144 tokens), I100 (a
query and 100 documents of one 448x448 JPEG and a 32-token title), MM100 (mixed query and mixed
documents: a 512x512 image + text against 100 x (640x480 image + 60 tokens)), and single pairs
(one title; one 448x448 image + title) for the latency the console sees.

Token counts are measured with the tokenizer passed in; every caller passes the tiny checkpoint's,
which is the real Qwen2.5 tokenizer (lychee_grpc/engine/model/qwen_vocab.py), so they are counts
of Lychee-Rerank-MM's own tokens."""

from __future__ import annotations

import io
import random
from collections.abc import Sequence

from lychee_grpc.engine.types import Document, ImagePart, Part, Query, TextPart

WORDS = ("retro denim jacket women slim vintage wash blue jeans coat spring autumn sofa grey fabric three "
         "seater modern wireless bluetooth earbuds noise cancelling running shoes breathable mesh dress "
         "summer chiffon floral midi water bottle insulated keyboard gaming organic green tea gift box").split()

Workload = tuple[Query, list[Document]]


def words_of_tokens(tok, rng: random.Random, n: int) -> str:
    """Random words from WORDS until the text is at least `n` tokens (at most a word's tokens over)."""
    text = ""
    while len(tok.encode(text, add_special_tokens=False)) < n:
        text += ("" if not text else " ") + rng.choice(WORDS)
    return text


def jpeg(rng: random.Random, size: int, height: int | None = None) -> bytes:
    """A size x size (or size x height) JPEG of coloured rectangles."""
    from PIL import Image, ImageDraw

    width, height = size, height or size
    img = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        draw.rectangle((x0, y0, x0 + rng.randrange(width // 2), y0 + rng.randrange(height // 2)),
                       fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def text_workload(tok, seed: int, documents: int = 100) -> Workload:
    rng = random.Random(seed)
    query = Query((TextPart(words_of_tokens(tok, rng, 16)),))
    docs = [Document(str(i), (TextPart(words_of_tokens(tok, rng, rng.randint(48, 144))),))
            for i in range(documents)]
    return query, docs


def image_workload(tok, seed: int, size: int = 448, documents: int = 100) -> Workload:
    rng = random.Random(seed)
    query = Query((TextPart(words_of_tokens(tok, rng, 12)),))
    docs = [Document(str(i), (ImagePart(jpeg(rng, size)), TextPart(words_of_tokens(tok, rng, 32))))
            for i in range(documents)]
    return query, docs


def mixed_workload(tok, seed: int, documents: int = 100) -> Workload:
    """MM100: a 512x512 image and 12 tokens of text against documents of a 640x480 image and 60 tokens."""
    rng = random.Random(seed)
    query = Query((ImagePart(jpeg(rng, 512)), TextPart(words_of_tokens(tok, rng, 12))))
    docs = [Document(str(i), (ImagePart(jpeg(rng, 640, 480)), TextPart(words_of_tokens(tok, rng, 60))))
            for i in range(documents)]
    return query, docs


def text_pair(tok, seed: int) -> Workload:
    """One pair: a 16-token query and a 64-token title."""
    rng = random.Random(seed)
    query = Query((TextPart(words_of_tokens(tok, rng, 16)),))
    return query, [Document("0", (TextPart(words_of_tokens(tok, rng, 64)),))]


def image_pair(tok, seed: int, size: int = 448) -> Workload:
    """One pair: a 12-token query and a 448x448 JPEG with a 32-token title."""
    rng = random.Random(seed)
    query = Query((TextPart(words_of_tokens(tok, rng, 12)),))
    return query, [Document("0", (ImagePart(jpeg(rng, size)), TextPart(words_of_tokens(tok, rng, 32))))]


def as_received(query: Query, docs: Sequence[Document]) -> tuple[Query, list[Document]]:
    """The same request in new part objects (the bytes shared), as a transport builds them for
    each call: nothing a part computes once (`ImagePart.digest`) carries over from an earlier
    request of the benchmark that sent the same workload."""
    def fresh(parts: Sequence[Part]) -> tuple[Part, ...]:
        return tuple(ImagePart(p.data, p.picture) if isinstance(p, ImagePart) else p for p in parts)

    return Query(fresh(query.parts)), [Document(d.id, fresh(d.parts)) for d in docs]

