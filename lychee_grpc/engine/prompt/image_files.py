"""Image files -> checked, upright RGB pictures, without torch (the service's Explain decodes with
these too, so a picture it masks is the one the engine would decode, refused in the same words).

Bounds are checked on the encoded size and on the declared width x height before any pixel is
decoded, so a decompression bomb costs a header read.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

from ..config import ImageLimits
from ..types import ImagePart, Picture

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
MAX_ASPECT_RATIO = 200  # Qwen2.5-VL's smart_resize refuses anything wider


class ImageRejected(ValueError):
    """The bytes are not an acceptable image; the message says why."""


def content_key(data: bytes) -> bytes:
    """`image_key` of an image part holding `data`."""
    return image_key(ImagePart(data))


def image_key(part: ImagePart) -> bytes:
    """What identifies an image part's content: its bytes' digest (128 bits of `ImagePart.digest`),
    or its picture's."""
    return part.picture.key if part.picture is not None else part.digest[:16]


def cheap_key(data: bytes) -> bytes:
    """An 8-byte key for image bytes from their length and their first and last 2 KB: equal bytes
    give equal keys; different bytes of the same length, head and tail collide, so a user either
    tolerates that or compares in full on a match. Hashing whole images (`content_key`) held the
    server's event loop 42 ms per 100 photos of 200 KB when the workers' routing did it (1.1 ms
    this way). Python's own hash of the three (SipHash, keyed per process: a key holds in the
    process that made it, the only place one is used) took 1.2 us against BLAKE2b's 5.6 (fed in
    pieces under 2 KB, from which hashlib lets go of the GIL: the preparing thread then waited to
    take it back from the decode threads) on the development host."""
    return hash((len(data), data[:2048], data[-2048:])).to_bytes(8, "little", signed=True)


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Decodes JPEG/PNG/WebP/GIF (first frame) bytes into an upright RGB image."""
    return load_image(open_image(data, limits))


def open_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Opens image bytes reading their header only: `check_size` on the bytes, then the format
    (JPEG/PNG/WebP/GIF) and `check_declared` on the width x height it declares."""
    check_size(data, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"image declares too many pixels ({exc})") from None
    except Exception:
        raise ImageRejected("not a decodable JPEG, PNG, WebP or GIF image") from None
    check_declared(*img.size, limits)
    return img


def check_size(data: bytes, limits: ImageLimits) -> None:
    """The bound on encoded bytes: not empty, and at most `limits.max_bytes`."""
    if not data:
        raise ImageRejected("image is empty")
    if len(data) > limits.max_bytes:
        raise ImageRejected(f"image is {len(data)} bytes, over the limit of {limits.max_bytes}")


def check_declared(width: int, height: int, limits: ImageLimits) -> None:
    """The bounds on what a header declares, checked before any pixel is decoded: some pixels, at
    most `limits.max_pixels` of them, and an aspect ratio up to MAX_ASPECT_RATIO."""
    if width <= 0 or height <= 0:
        raise ImageRejected(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageRejected(
            f"image declares {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels}"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageRejected(f"image aspect ratio {width}x{height} is over {MAX_ASPECT_RATIO}:1")


def load_image(img: Image.Image) -> Image.Image:
    """Decodes an opened image's pixels (a GIF's first frame), turned upright by its EXIF
    orientation, as RGB (transparent pixels on white)."""
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


def check_picture(picture: Picture, limits: ImageLimits) -> None:
    """The bounds on decoded pixels given in place of bytes (Explain's masked cells): those of
    `check_declared`, as for the image they were made from."""
    check_declared(picture.width, picture.height, limits)
