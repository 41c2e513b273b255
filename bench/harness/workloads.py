"""The benchmark's requests: T100 (a query and 100 product titles of 48-144 tokens) and I100 (a
query and 100 documents of one 448x448 JPEG and a 32-token title), seeded.

Token counts are measured with the tokenizer passed in; every caller passes the tiny checkpoint's,
which is the real Qwen2.5 tokenizer (lychee_grpc/engine/model/qwen_vocab.py), so they are counts
of Lychee-Rerank-MM's own tokens."""

from __future__ import annotations

import io
import random

from lychee_grpc.engine.types import Document, ImagePart, Query, TextPart

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


def jpeg(rng: random.Random, size: int) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.randrange(size), rng.randrange(size)
        draw.rectangle((x0, y0, x0 + rng.randrange(size // 2), y0 + rng.randrange(size // 2)),
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
