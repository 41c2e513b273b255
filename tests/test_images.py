"""Image decoding: formats, EXIF orientation, transparency, and bounds checked before decoding."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from lychee_grpc.engine.images import ImageLimits, ImageRejected, decode_image

from .helpers import png_declaring, solid_image

LIMITS = ImageLimits(max_bytes=1024 * 1024, max_pixels=1_000_000)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_supported_formats_decode_to_rgb(fmt):
    img = decode_image(solid_image(40, 30, (10, 200, 30), fmt), LIMITS)
    assert img.mode == "RGB" and img.size == (40, 30)


def test_gif_uses_its_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    pixel = decode_image(buf.getvalue(), LIMITS).getpixel((8, 8))
    assert pixel[0] > 200 and pixel[2] < 50


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = solid_image(60, 20, fmt="JPEG", exif=exif.tobytes())
    assert decode_image(data, LIMITS).size == (20, 60)


def test_transparent_pixels_become_white():
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buf, "PNG")
    assert decode_image(buf.getvalue(), LIMITS).getpixel((1, 1)) == (255, 255, 255)


def test_decompression_bomb_is_refused_from_its_header(monkeypatch):
    loaded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(1))
    with pytest.raises(ImageRejected, match="pixels"):
        decode_image(png_declaring(5000, 5000), LIMITS)
    assert not loaded, "pixels were decoded before the bound was checked"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"GIF89a-not-really", "not a decodable"),
        (b"\x89PNG" + b"\0" * (2 * 1024 * 1024), "bytes"),
        (solid_image(4000, 10), "aspect ratio"),
        (solid_image(64, 64, fmt="JPEG")[:200], "truncated|corrupt|decodable"),
        (solid_image(20, 20, fmt="BMP"), "not a decodable"),
    ],
    ids=["empty", "garbage", "too-many-bytes", "aspect", "truncated", "bmp"],
)
def test_bad_images_are_rejected_with_a_reason(data, message):
    with pytest.raises(ImageRejected, match=message):
        decode_image(data, LIMITS)
