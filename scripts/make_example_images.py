"""Writes the small example images the README and docs/http.md use (docs/examples/*.jpg): a shoe,
a jacket, a sofa and a product photo of a sofa. Drawn shapes, not photographs: they exist so that
every command shown runs as written; the tiny model's scores mean nothing either way.

    python scripts/make_example_images.py [FOLDER]
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 192


def _canvas(background=(244, 244, 240)) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (SIZE, SIZE), background)
    return img, ImageDraw.Draw(img)


def shoe() -> Image.Image:
    img, d = _canvas()
    d.polygon([(24, 120), (70, 70), (110, 78), (150, 112), (172, 126), (172, 142), (24, 142)], fill=(200, 32, 40))
    d.rectangle((24, 142, 172, 154), fill=(250, 250, 250), outline=(120, 120, 120))
    for x in range(78, 128, 12):
        d.line((x, 84, x + 8, 96), fill=(255, 255, 255), width=3)
    return img


def jacket() -> Image.Image:
    img, d = _canvas()
    blue = (64, 96, 150)
    d.polygon([(56, 40), (96, 56), (136, 40), (168, 70), (152, 96), (140, 88), (140, 168), (52, 168), (52, 88),
               (40, 96), (24, 70)], fill=blue)
    d.line((96, 56, 96, 168), fill=(30, 50, 90), width=3)
    for y in range(76, 160, 20):
        d.ellipse((100, y, 106, y + 6), fill=(210, 180, 90))
    return img


def sofa(colour=(128, 128, 132), background=(244, 244, 240)) -> Image.Image:
    img, d = _canvas(background)
    d.rounded_rectangle((32, 64, 160, 112), radius=10, fill=colour)
    d.rounded_rectangle((20, 96, 172, 140), radius=10, fill=tuple(c - 20 for c in colour))
    d.rectangle((28, 140, 36, 156), fill=(80, 60, 40))
    d.rectangle((156, 140, 164, 156), fill=(80, 60, 40))
    return img


def product_photo() -> Image.Image:
    """The same kind of sofa as sofa.jpg, on a shop's backdrop with a price tag."""
    img = sofa((120, 122, 128), background=(226, 232, 240))
    d = ImageDraw.Draw(img)
    d.rectangle((130, 20, 180, 42), fill=(220, 38, 38))
    d.text((136, 25), "4999", fill=(255, 255, 255))
    return img


IMAGES = {"shoe.jpg": shoe, "jacket.jpg": jacket, "sofa.jpg": sofa, "p1.jpg": product_photo}


def main(folder: str = "docs/examples") -> int:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, draw in IMAGES.items():
        draw().save(out / name, "JPEG", quality=85)
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
