"""Image decoding: every image becomes 8-bit RGB, whatever it was on disk.

A pixel limit guards against decompression bombs (a small file that decodes to
gigabytes): an image with more than :func:`max_image_pixels` pixels is refused
with a :class:`DataError` before it is decoded, so ``index``/``prepare --skip-bad``
skip it with a note and ``query`` says so in one line. The limit is
``MCLNET_MAX_IMAGE_PIXELS`` (default 89,478,485, Pillow's own warning threshold;
re-id crops are a few thousand pixels).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mclnet_cli.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS's default


def max_image_pixels() -> int:
    """The pixel limit: ``MCLNET_MAX_IMAGE_PIXELS`` when it is a positive integer, else the default."""
    text = os.environ.get("MCLNET_MAX_IMAGE_PIXELS", "").strip().replace("_", "")
    return int(text) if text.isdigit() and int(text) > 0 else DEFAULT_MAX_IMAGE_PIXELS


def check_pixels(image: Image.Image, path: Path | str) -> None:
    """Refuse an image above the pixel limit (call after ``Image.open``, before ``load``)."""
    width, height = image.size
    limit = max_image_pixels()
    if width * height > limit:
        raise DataError(
            f"image too large {path}: {width}x{height} pixels is over the limit of {limit:,} "
            "(a decompression bomb?; MCLNET_MAX_IMAGE_PIXELS raises it)"
        )


def is_image_file(path: Path | str) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert grayscale, palette, RGBA and 16-bit (``I;16``/``I``/``F``) images to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def load_rgb(path: Path | str) -> Image.Image:
    """Decode an image file to RGB; a file that does not decode raises :class:`DataError` naming it."""
    Image.MAX_IMAGE_PIXELS = max(max_image_pixels(), Image.MAX_IMAGE_PIXELS or 0)  # our check below decides
    try:
        with Image.open(path) as image:
            check_pixels(image, path)
            image.load()
            return to_rgb(image)
    except FileNotFoundError as exc:
        raise DataError(f"image not found: {path}") from exc
    except Image.DecompressionBombError as exc:  # not an OSError
        raise DataError(f"image too large {path}: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, MemoryError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from exc
