"""Image bytes -> validated RGB picture -> Qwen2.5-VL patches.

Bounds are checked on the encoded size and on the declared width x height before any pixel
is decoded, so a decompression bomb costs a header read. Resizing to the model's pixel range is
left to the checkpoint's own image processor (Qwen2.5-VL smart resize), so it matches the model.

`decode_pixels` gives the uint8 pixels as a tensor. Plain JPEGs (the usual product photo:
YCbCr or greyscale, upright) are decoded by torchvision's libjpeg-turbo decoder, which writes the
tensor directly and releases the GIL; PIL's decode does too, but getting its pixels out
(`tobytes`) holds the GIL for ~0.55 ms per 448x448 image, which serialised the decode threads.
The two decoders give the same pixels; `jpeg_decoder_agrees()` checks that on this machine's
libraries at start-up, and everything else goes through PIL.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

try:
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - torchvision is a dependency
    decode_jpeg = None

log = logging.getLogger(__name__)

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
MAX_ASPECT_RATIO = 200  # Qwen2.5-VL's smart_resize refuses anything wider


class ImageRejected(ValueError):
    """The bytes are not an acceptable image; the message says why."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000


def content_key(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Decodes JPEG/PNG/WebP/GIF (first frame) bytes into an upright RGB image."""
    return _load(_open(data, limits))


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    """Reads and checks the header only."""
    if not data:
        raise ImageRejected("image is empty")
    if len(data) > limits.max_bytes:
        raise ImageRejected(f"image is {len(data)} bytes, over the limit of {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"image declares too many pixels ({exc})") from None
    except Exception:
        raise ImageRejected("not a decodable JPEG, PNG, WebP or GIF image") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageRejected(
            f"image declares {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels}"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageRejected(f"image aspect ratio {width}x{height} is over {MAX_ASPECT_RATIO}:1")
    return img


def _load(img: Image.Image) -> Image.Image:
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img) or img
    except Exception:
        raise ImageRejected("image data is truncated or corrupt") from None
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    # Transparent pixels go on white, as transformers' convert_to_rgb does.
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_pixels(data: bytes, limits: ImageLimits, fast_jpeg: bool = False) -> torch.Tensor:
    """The upright RGB pixels of JPEG/PNG/WebP/GIF bytes as uint8 [3, height, width]: what
    torchvision's pil_to_tensor gives for `decode_image`'s picture."""
    img = _open(data, limits)
    if fast_jpeg and _plain_jpeg(img):
        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            raise ImageRejected("image data is truncated or corrupt") from None
    return torch.from_numpy(np.array(_load(img))).permute(2, 0, 1)


def _plain_jpeg(img: Image.Image) -> bool:
    # CMYK (Adobe's inverted variant included) and rotated photos keep PIL's handling.
    return (
        decode_jpeg is not None
        and img.format == "JPEG"
        and img.mode in ("RGB", "L")
        and img.getexif().get(0x0112, 1) == 1
    )


@functools.cache
def jpeg_decoder_agrees() -> bool:
    """Whether torchvision decodes JPEGs to exactly PIL's pixels here (4:4:4, 4:2:2, 4:2:0,
    progressive, greyscale, odd sizes)."""
    if decode_jpeg is None:
        return False
    rng = np.random.default_rng(0)
    limits = ImageLimits()
    for (w, h), options, mode in [
        ((61, 37), {"subsampling": 0}, "RGB"),
        ((64, 48), {"subsampling": 1, "quality": 95}, "RGB"),
        ((33, 70), {"subsampling": 2, "quality": 75}, "RGB"),
        ((40, 40), {"subsampling": 2, "progressive": True}, "RGB"),
        ((29, 31), {}, "L"),
    ]:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[: h // 2] = pixels[: h // 2].mean(axis=(0, 1), dtype=np.uint8)  # smooth and busy areas
        buf = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buf, "JPEG", **options)
        data = buf.getvalue()
        try:
            same = torch.equal(decode_pixels(data, limits, fast_jpeg=True), decode_pixels(data, limits))
        except Exception as exc:  # any failure means: keep PIL
            log.info("torchvision JPEG decoding unavailable: %s", exc)
            return False
        if not same:
            log.warning("torchvision and PIL decode JPEGs differently here; decoding them with PIL")
            return False
    return True
