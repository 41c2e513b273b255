"""Image bytes -> validated RGB picture -> Qwen2.5-VL patches.

Bounds are checked on the encoded size and on the declared width x height before any pixel
is decoded, so a decompression bomb costs a header read (image_files.py, which holds the checks and
PIL's decode). Resizing to the model's pixel range is
left to the checkpoint's own image processor (Qwen2.5-VL smart resize), so it matches the model.

`decode_pixels` gives the uint8 pixels as a tensor. Plain JPEGs (the usual product photo:
YCbCr or greyscale, upright) are decoded by torchvision's libjpeg-turbo decoder, which writes the
tensor directly and releases the GIL; PIL's decode does too, but getting its pixels out
(`tobytes`) holds the GIL for ~0.55 ms per 448x448 image, which serialised the decode threads.
The two decoders give the same pixels; `jpeg_decoder_agrees()` checks that on this machine's
libraries at start-up, and everything else goes through PIL.

On that path the JPEG's header is read by `_jpeg_header` (a walk over its markers) rather than by
PIL, whose parser runs ~100 Python-level steps per image holding the GIL: with 8 decode threads,
the thread that launches GPU work waited 0.5-0.9 ms for each torch call on an H200, which delayed
the vision tower of a request's first images (bench/RESULTS.md, "Decode threads and the GIL").
"""

from __future__ import annotations

import functools
import io
import logging
import struct

import numpy as np
import torch
from PIL import Image

from ..config import ImageLimits
from ..types import ImagePart
from .image_files import (
    MAX_ASPECT_RATIO,
    SUPPORTED_FORMATS,
    ImageRejected,
    check_declared,
    check_picture,
    check_size,
    content_key,
    decode_image,
    image_key,
    load_image,
    open_image,
)

__all__ = [
    "MAX_ASPECT_RATIO", "SUPPORTED_FORMATS", "ImageRejected", "content_key", "decode_image", "decode_pixels",
    "image_key", "jpeg_decoder_agrees", "part_pixels",
]

try:
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - torchvision is a dependency
    decode_jpeg = None
else:
    # The op itself: decode_jpeg's Python wrapper costs more GIL time than the call.
    _decode_jpeg = torch.ops.image.decode_jpeg
    _RGB = ImageReadMode.RGB.value

_U16X2 = struct.Struct(">HH")

log = logging.getLogger(__name__)


def part_pixels(part: ImagePart, limits: ImageLimits, fast_jpeg: bool = False, pin: bool = False) -> torch.Tensor:
    """`decode_pixels` of an image part; a part given as decoded pixels is checked, not decoded.
    With `pin`, in pinned memory (for an asynchronous copy to a GPU): a picture is written there
    directly, a masked one with its box filled on the way (one copy, into memory the allocator
    keeps)."""
    picture = part.picture
    if picture is None:
        pixels = decode_pixels(part.data, limits, fast_jpeg)
        return pixels.pin_memory() if pin else pixels
    check_picture(picture, limits)
    if not pin:
        return torch.from_numpy(picture.pixels).permute(2, 0, 1)
    pinned = torch.empty((picture.height, picture.width, 3), dtype=torch.uint8, pin_memory=True)
    picture.copy_into(pinned.numpy())
    return pinned.permute(2, 0, 1)


def decode_pixels(data: bytes, limits: ImageLimits, fast_jpeg: bool = False) -> torch.Tensor:
    """The upright RGB pixels of JPEG/PNG/WebP/GIF bytes as uint8 [3, height, width]: what
    torchvision's pil_to_tensor gives for `decode_image`'s picture."""
    if fast_jpeg:
        header = _jpeg_header(data)
        if header is not None:
            check_size(data, limits)
            check_declared(*header, limits)
            try:
                # EXIF orientation applied by the decoder (checked against PIL's at start-up).
                return _decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), _RGB, True)
            except RuntimeError:
                pass  # PIL gives the verdict on anything the fast path cannot read
    img = open_image(data, limits)
    return torch.from_numpy(np.array(load_image(img))).permute(2, 0, 1)


# Frames libjpeg decodes as PIL does: baseline, extended sequential and progressive.
_SOF = {0xC0, 0xC1, 0xC2}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def _jpeg_header(data: bytes) -> tuple[int, int] | None:
    """(width, height) of an 8-bit baseline or progressive JPEG with 1 (grey) or 3 (YCbCr)
    components, read from its markers; None for anything else, which PIL then reads (CMYK,
    Adobe-transformed colours, multi-picture files, lossless or arithmetic coding, damage)."""
    if decode_jpeg is None or not data.startswith(b"\xff\xd8"):
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2 or pos + 2 + length > end:
            return None
        if marker in _SOF:
            if length < 8:
                return None
            height, width = _U16X2.unpack_from(data, pos + 5)
            return (width, height) if data[pos + 4] == 8 and data[pos + 9] in (1, 3) else None
        if marker == 0xEE or 0xC3 <= marker <= 0xCF or marker == 0xDA:  # Adobe; other frames; a scan first
            return None
        if marker == 0xE2 and data[pos + 4 : pos + 8] == b"MPF\0":  # a multi-picture file
            return None
        pos += 2 + length
    return None


@functools.cache
def jpeg_decoder_agrees() -> bool:
    """Whether torchvision decodes JPEGs to exactly PIL's pixels here (4:4:4, 4:2:2, 4:2:0,
    progressive, greyscale, odd sizes, each EXIF orientation)."""
    if decode_jpeg is None:
        return False
    rng = np.random.default_rng(0)
    limits = ImageLimits()
    cases = [
        ((61, 37), {"subsampling": 0}, "RGB"),
        ((64, 48), {"subsampling": 1, "quality": 95}, "RGB"),
        ((33, 70), {"subsampling": 2, "quality": 75}, "RGB"),
        ((40, 40), {"subsampling": 2, "progressive": True}, "RGB"),
        ((29, 31), {}, "L"),
    ]
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        cases.append(((23, 14), {"exif": exif.tobytes()}, "RGB"))
    for (w, h), options, mode in cases:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[: h // 2] = pixels[: h // 2].mean(axis=(0, 1), dtype=np.uint8)  # smooth and busy areas
        buf = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buf, "JPEG", **options)
        data = buf.getvalue()
        try:
            # Each sample is a plain JPEG: the fast path must take it and give PIL's pixels.
            fast = None if _jpeg_header(data) is None else _decode_jpeg(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), _RGB, True)
            same = fast is not None and torch.equal(fast, decode_pixels(data, limits))
        except Exception as exc:  # any failure means: keep PIL
            log.info("torchvision JPEG decoding unavailable: %s", exc)
            return False
        if not same:
            log.warning("torchvision and PIL decode JPEGs differently here; decoding them with PIL")
            return False
    return True
