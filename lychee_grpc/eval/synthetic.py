"""A small synthetic product-search dataset with PIL-drawn product images, in the evaluation
JSONL format: for the tests and the demo, so that no download is ever needed.

Each query asks for a product type in a colour and a style; its candidates are graded the way
ESCI grades them: the same type, colour and style (3), the same type otherwise (2), a product
that goes with it (1), anything else (0). Queries are text, an image of the wanted product, or
both; candidates are image + text mostly, some text or image alone, a few images inline."""

from __future__ import annotations

import base64
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "blue": (40, 80, 200),
    "green": (50, 150, 70),
    "black": (30, 30, 30),
    "beige": (220, 200, 160),
    "pink": (235, 140, 180),
}
STYLES = ["retro", "minimalist", "sporty", "ins-style"]


@dataclass(frozen=True)
class ProductType:
    name: str
    scenario: str
    function: str
    goes_with: str
    points: tuple[str, ...]


TYPES = [
    ProductType("jacket", "commute", "warmth", "backpack", ("windproof shell", "two zip pockets", "slim fit")),
    ProductType("sofa", "home", "seating", "lamp", ("three seats", "washable covers", "solid wood legs")),
    ProductType("mug", "office", "drinking", "lamp", ("350 ml", "dishwasher safe", "keeps heat")),
    ProductType("sneaker", "outdoor", "walking", "backpack", ("cushioned sole", "breathable mesh", "non-slip")),
    ProductType("lamp", "home", "lighting", "sofa", ("warm LED", "dimmable", "USB-C powered")),
    ProductType("backpack", "commute", "storage", "jacket", ("laptop sleeve", "water resistant", "25 litres")),
]


def draw_product(kind: str, color: str, style: str, size: int = 112) -> bytes:
    """A flat drawing: one silhouette per product type, filled with the colour, with a pattern
    per style (stripes, dots, a frame, or plain)."""
    s = size / 112
    img = Image.new("RGB", (size, size), (246, 246, 242))
    d = ImageDraw.Draw(img)
    fill = COLORS[color]

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        return (round(x0 * s), round(y0 * s), round(x1 * s), round(y1 * s))

    shapes = {
        "jacket": [("polygon", [(30, 25), (82, 25), (100, 55), (86, 60), (82, 95), (30, 95), (26, 60), (12, 55)])],
        "sofa": [("rect", box(14, 50, 98, 82)), ("rect", box(20, 34, 92, 56)), ("rect", box(20, 82, 28, 94)),
                 ("rect", box(84, 82, 92, 94))],
        "mug": [("rect", box(30, 30, 74, 90)), ("ellipse", box(66, 44, 94, 74))],
        "sneaker": [("polygon", [(14, 70), (40, 50), (70, 58), (98, 72), (98, 84), (14, 84)])],
        "lamp": [("polygon", [(34, 20), (78, 20), (90, 50), (22, 50)]), ("rect", box(53, 50, 59, 88)),
                 ("rect", box(36, 88, 76, 94))],
        "backpack": [("rect", box(28, 26, 84, 96)), ("rect", box(36, 60, 76, 86)), ("ellipse", box(42, 14, 70, 34))],
    }
    for shape, geom in shapes[kind]:
        if shape == "polygon":
            d.polygon([(x * s, y * s) for x, y in geom], fill=fill, outline=(20, 20, 20))
        elif shape == "rect":
            d.rectangle(geom, fill=fill, outline=(20, 20, 20))
        else:
            d.ellipse(geom, fill=fill, outline=(20, 20, 20))
    mark = (255, 255, 255) if color in ("black", "blue", "red", "green") else (40, 40, 40)
    if style == "sporty":
        for y in range(40, 90, 12):
            d.line(box(20, y, 92, y), fill=mark, width=max(1, round(2 * s)))
    elif style == "retro":
        for x in range(34, 84, 14):
            for y in range(44, 90, 14):
                d.ellipse(box(x, y, x + 4, y + 4), fill=mark)
    elif style == "ins-style":
        d.rectangle(box(4, 4, 108, 108), outline=(200, 170, 120), width=max(1, round(4 * s)))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _title(kind: ProductType, color: str, style: str, rng: random.Random) -> str:
    points = rng.sample(kind.points, 2)
    return f"{style.capitalize()} {color} {kind.name}: {points[0]}, {points[1]}"


def make_synthetic(
    out: str | Path, queries: int = 6, candidates: int = 8, seed: int = 0, image_size: int = 112
) -> Path:
    """Writes `out`/data.jsonl and `out`/images/; returns the JSONL path."""
    if candidates < 4:
        raise ValueError("candidates: at least 4 per query (one of each grade)")
    rng = random.Random(seed)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    by_name = {t.name: t for t in TYPES}
    lines = []
    for qn in range(queries):
        kind = TYPES[qn % len(TYPES)]
        color, style = rng.choice(list(COLORS)), rng.choice(STYLES)
        qid = f"q{qn:03d}"
        query: dict[str, str] = {}
        modality = ("text", "image", "mixed")[qn % 3]
        if modality != "image":
            query["text"] = f"{style} {color} {kind.name}" if modality == "text" else f"like this, in {color}"
        if modality != "text":
            name = f"images/{qid}.png"
            (out / name).write_bytes(draw_product(kind.name, color, style, image_size))
            query["image"] = name

        # grades: one exact match, a substitute, a complement, the rest irrelevant
        plan = [(kind, color, style, 3)]
        plan.append((kind, rng.choice([c for c in COLORS if c != color]), rng.choice(STYLES), 2))
        plan.append((by_name[kind.goes_with], color, rng.choice(STYLES), 1))
        others = [t for t in TYPES if t.name not in (kind.name, kind.goes_with)]
        while len(plan) < candidates:
            extra = rng.random()
            if extra < 0.2:
                plan.append((kind, color, rng.choice([s for s in STYLES if s != style]), 2))
            else:
                plan.append((rng.choice(others), rng.choice(list(COLORS)), rng.choice(STYLES), 0))
        # a first-stage retriever that only half knows: relevant ones drift up the list a little
        order = sorted(range(len(plan)), key=lambda i: rng.random() - 0.05 * plan[i][3])

        rows = []
        for rank, i in enumerate(order):
            ptype, pcolor, pstyle, gain = plan[i]
            cid = f"{qid}-p{rank}"
            row: dict[str, object] = {"id": cid, "label": gain,
                                      "signals": {"sales": int(rng.lognormvariate(5, 1.2))}}
            shape = rng.random()
            if shape > 0.15:
                row["text"] = _title(ptype, pcolor, pstyle, rng)
            if shape < 0.85 or "text" not in row:
                picture = draw_product(ptype.name, pcolor, pstyle, image_size)
                if rank % 5 == 4:
                    row["image_base64"] = base64.b64encode(picture).decode()
                else:
                    name = f"images/{cid}.png"
                    (out / name).write_bytes(picture)
                    row["image"] = name
            rows.append(row)
        lines.append({
            "query_id": qid,
            "query": query,
            "categories": {"scenario": kind.scenario, "style": style, "function": kind.function,
                           "visual_feature": color},
            "candidates": rows,
        })
    path = out / "data.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
