"""Image bytes -> a checked PIL image, with the request limits applied before and while decoding
(bytes first, then the header's size, then the decode itself)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    """Encoded size of one image (--max-image-bytes)."""
    max_pixels: int = 4096 * 4096
    """Width x height of one image (--max-image-pixels); checked from the header, before the
    pixels are decoded, so a decompression bomb is refused without being expanded."""


def decode_image(data: bytes, limits: ImageLimits) -> Any:
    """Bytes of a PNG/JPEG/... -> an RGB PIL image; ValueError (the caller's 400) when the bytes
    are too many, not an image, or the image too large."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > limits.max_bytes:
        raise ValueError(f"image is {len(data)} bytes; the limit is {limits.max_bytes}")
    if not data:
        raise ValueError("image is empty")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ValueError(f"image is {width}x{height} = {width * height} pixels; the limit "
                             f"is {limits.max_pixels}")
        image.load()
    except ValueError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"the image could not be decoded: {e}") from None
    return image.convert("RGB")


def image_identifier(image: Any) -> str:
    """Content hash of a PIL image: equal pixels (whatever the encoding) give equal hashes."""
    digest = hashlib.sha256()
    digest.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()
