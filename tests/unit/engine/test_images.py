"""Image decoding: formats, EXIF orientation, transparency, and bounds checked before decoding."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from lychee_grpc.engine.config import ImageLimits
from lychee_grpc.engine.prompt.image_files import check_declared, check_size, load_image, open_image
from lychee_grpc.engine.prompt.images import ImageRejected, decode_image

from ...helpers import png_declaring, solid_image

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


def test_open_image_reads_the_header_and_load_image_decodes_the_pixels():
    img = open_image(png_declaring(30, 20), LIMITS)  # a header with almost no pixel data after it
    assert img.size == (30, 20)
    with pytest.raises(ImageRejected, match="truncated or corrupt"):
        load_image(img)
    assert load_image(open_image(solid_image(30, 20, (10, 200, 30)), LIMITS)).getpixel((5, 5)) == (10, 200, 30)


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [(0, 20, "no pixels"), (1001, 1000, "1001000 pixels, over the limit"), (201, 1, "aspect ratio 201x1")],
)
def test_declared_sizes_outside_the_bounds_are_rejected(width, height, message):
    check_declared(200, 1, LIMITS)
    check_declared(1000, 1000, LIMITS)
    with pytest.raises(ImageRejected, match=message):
        check_declared(width, height, LIMITS)


def test_encoded_sizes_outside_the_bounds_are_rejected():
    check_size(b"\0" * LIMITS.max_bytes, LIMITS)
    with pytest.raises(ImageRejected, match="empty"):
        check_size(b"", LIMITS)
    with pytest.raises(ImageRejected, match="over the limit"):
        check_size(b"\0" * (LIMITS.max_bytes + 1), LIMITS)


def _noise_jpeg(width: int, height: int, mode: str = "RGB", seed: int = 0, **options) -> bytes:
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, "JPEG", **options)
    return buf.getvalue()


def test_jpeg_fast_path_agrees_with_pil_on_this_machine():
    from lychee_grpc.engine.prompt.images import jpeg_decoder_agrees

    assert jpeg_decoder_agrees()


@pytest.mark.parametrize(
    ("size", "mode", "options"),
    [
        ((448, 448), "RGB", {"quality": 90}),
        ((61, 97), "RGB", {"subsampling": 0, "quality": 100}),
        ((97, 61), "RGB", {"subsampling": 1}),
        ((1000, 7), "RGB", {"subsampling": 2, "quality": 50}),
        ((64, 64), "RGB", {"progressive": True}),
        ((33, 45), "L", {}),
        ((40, 30), "CMYK", {}),  # PIL path
    ],
)
def test_decoded_pixels_equal_pil_to_tensor_of_the_picture(size, mode, options):
    import numpy as np
    import torch

    from lychee_grpc.engine.prompt.images import decode_pixels

    data = _noise_jpeg(*size, mode=mode, **options)
    ref = torch.from_numpy(np.array(decode_image(data, LIMITS))).permute(2, 0, 1)
    for fast in (False, True):
        got = decode_pixels(data, LIMITS, fast_jpeg=fast)
        assert got.dtype == torch.uint8 and got.shape == ref.shape
        assert torch.equal(got, ref)


def test_jpeg_fast_path_keeps_exif_rotation_and_rejects_truncated_data():
    from lychee_grpc.engine.prompt.images import decode_pixels

    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = solid_image(60, 20, fmt="JPEG", exif=exif.tobytes())
    assert tuple(decode_pixels(rotated, LIMITS, fast_jpeg=True).shape) == (3, 60, 20)
    data = _noise_jpeg(64, 64)
    with pytest.raises(ImageRejected, match="truncated or corrupt"):
        decode_pixels(data[: len(data) // 2], LIMITS, fast_jpeg=True)


def _with_declared_size(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0) declaring another size."""
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[sof + 9 :]


@pytest.mark.parametrize(
    ("mode", "options", "plain"),
    [("RGB", {}, True), ("RGB", {"progressive": True}, True), ("L", {}, True), ("CMYK", {}, False)],
    ids=["baseline", "progressive", "grey", "cmyk"],
)
def test_jpeg_header_reads_plain_jpegs_and_leaves_the_rest_to_pil(mode, options, plain):
    from lychee_grpc.engine.prompt.images import _jpeg_header

    data = _noise_jpeg(37, 21, mode=mode, **options)
    assert _jpeg_header(data) == ((37, 21) if plain else None)
    assert _jpeg_header(solid_image(8, 8, fmt="PNG")) is None
    assert _jpeg_header(data[:40]) is None  # cut before its frame header
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "MPO", save_all=True, append_images=frames[1:])
    assert _jpeg_header(buf.getvalue()) is None  # a multi-picture file


def test_jpeg_fast_path_reads_no_header_with_pil(monkeypatch):
    from lychee_grpc.engine.prompt import images

    def no_pil(*args, **kwargs):
        raise AssertionError("PIL opened a plain JPEG on the fast path")

    monkeypatch.setattr(images.Image, "open", no_pil)
    assert tuple(images.decode_pixels(_noise_jpeg(30, 20), LIMITS, fast_jpeg=True).shape) == (3, 20, 30)


def test_jpeg_fast_path_refuses_a_declared_bomb_before_decoding(monkeypatch):
    from lychee_grpc.engine.prompt import images

    decoded = []
    monkeypatch.setattr(images, "_decode_jpeg", lambda *args: decoded.append(1))
    bomb = _with_declared_size(_noise_jpeg(16, 16), 30000, 30000)
    with pytest.raises(ImageRejected, match="declares 30000x30000"):
        images.decode_pixels(bomb, LIMITS, fast_jpeg=True)
    with pytest.raises(ImageRejected, match="aspect ratio"):
        images.decode_pixels(_with_declared_size(_noise_jpeg(16, 16), 3000, 2), LIMITS, fast_jpeg=True)
    assert not decoded


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_fast_path_applies_each_exif_orientation_as_pil_does(orientation):
    import numpy as np
    import torch

    from lychee_grpc.engine.prompt.images import decode_pixels

    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _noise_jpeg(30, 17, seed=orientation, exif=exif.tobytes())
    ref = torch.from_numpy(np.array(decode_image(data, LIMITS))).permute(2, 0, 1)
    assert torch.equal(decode_pixels(data, LIMITS, fast_jpeg=True), ref)
