"""Turning whatever a design tool exported into the RGB frame a family wants."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})


def load_image(path: Path, *, max_pixels: int) -> Image.Image:
    """Decode an image fully, apply its EXIF rotation and convert it to 8-bit RGB."""
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise InputError(
                    f"The image is too large ({width}×{height} pixels).",
                    detail=f"{width * height} pixels exceeds limits.max_image_pixels={max_pixels}",
                    fix="Export the image at a smaller size; the video is far smaller anyway.",
                )
            opened.load()
            image = ImageOps.exif_transpose(opened)
            return to_rgb(image)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(
            "The file is not an image vidrop can read.",
            detail=f"{type(exc).__name__}: {exc}",
            fix="Export it again as PNG or JPEG; check that the copy finished and the file is not damaged.",
        ) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from palette, alpha (on white), CMYK, 16-bit and greyscale images."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping to white.
        image = image.point(lambda value: value / 256).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def fit_image(image: Image.Image, width: int, height: int, fit: Literal["crop", "pad"]) -> Image.Image:
    """Fit to width×height keeping the aspect ratio: crop fills and cuts the edges, pad letterboxes."""
    if fit == "crop":
        return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)
    return ImageOps.pad(image, (width, height), method=Image.Resampling.LANCZOS, color=(0, 0, 0))
