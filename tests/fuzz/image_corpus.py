"""Malformed and unusual images, each generated here, with the outcome the server documents:
"ok" (scored) or "invalid" (INVALID_ARGUMENT naming the image's field)."""

from __future__ import annotations

import io
import random

from PIL import Image

from ..helpers import noise_image, png_declaring


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = random.Random(seed)
    rgb = Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
    return rgb.convert(mode)


def _frames(n: int) -> list[Image.Image]:
    return [_noise("RGB", (40, 32), seed=k) for k in range(n)]


def corpus() -> dict[str, tuple[bytes, str]]:
    jpeg = noise_image(64, 48, "JPEG", seed=11)
    png = noise_image(64, 48, "PNG", seed=12)
    sixteen = Image.frombytes("I;16", (40, 30), bytes(random.Random(3).randrange(256) for _ in range(40 * 30 * 2)))
    palette = _noise("RGB", (48, 48), seed=5).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    frames = _frames(3)
    return {
        "zero-bytes": (b"", "invalid"),
        "random-bytes": (random.Random(1).randbytes(2048), "invalid"),
        "truncated-jpeg": (jpeg[: len(jpeg) // 2], "invalid"),
        "jpeg-header-only": (jpeg[:200], "invalid"),
        "truncated-png": (png[: len(png) // 2], "invalid"),
        "png-signature-only": (png[:8], "invalid"),
        "png-bytes-named-jpeg": (png, "ok"),  # no name on the wire: the content decides
        "jpeg-behind-png-signature": (png[:8] + jpeg, "invalid"),
        "1x1": (_save(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "ok"),
        "1x1-jpeg": (_save(Image.new("RGB", (1, 1), (9, 9, 9)), "JPEG"), "ok"),
        "declares-20000x20000": (png_declaring(20000, 20000), "invalid"),
        "declares-0-height": (png_declaring(64, 0), "invalid"),
        "aspect-1x400": (_save(Image.new("RGB", (1, 400)), "PNG"), "invalid"),
        "cmyk-jpeg": (_save(_noise("CMYK", (48, 40)), "JPEG"), "ok"),
        "grayscale-jpeg": (_save(_noise("L", (48, 40)), "JPEG"), "ok"),
        "16-bit-png": (_save(sixteen, "PNG"), "ok"),
        "palette-transparency-png": (_save(palette, "PNG", transparency=0), "ok"),
        "la-png": (_save(_noise("LA", (32, 32)), "PNG"), "ok"),
        "rgba-webp": (_save(_noise("RGBA", (40, 40)), "WEBP"), "ok"),
        "exif-rotated-jpeg": (_save(_noise("RGB", (64, 32)), "JPEG", exif=exif), "ok"),
        "animated-gif": (_save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50), "ok"),
        "animated-webp": (_save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50), "ok"),
        "bmp": (_save(_noise("RGB", (32, 32)), "BMP"), "invalid"),
        "tiff": (_save(_noise("RGB", (32, 32)), "TIFF"), "invalid"),
        "ico": (_save(_noise("RGB", (32, 32)), "ICO"), "invalid"),
        "svg-as-text": (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" '
                        b'height="64" fill="red"/></svg>', "invalid"),
        "html": (b"<html><body>not an image</body></html>", "invalid"),
    }
