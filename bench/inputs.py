"""Inputs for the benchmarks: real images and sidecars, dropped the way careful tools drop them."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw


def image_bytes(index: int, size: tuple[int, int] = (64, 64)) -> bytes:
    """A small PNG that differs by index: a coloured disc on a coloured background."""
    image = Image.new("RGB", size, ((index * 37) % 256, (index * 91) % 256, 160))
    width, height = size
    ImageDraw.Draw(image).ellipse(
        (width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(250, (index * 53) % 256, 40)
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sidecar_bytes(request: dict[str, Any], **fields: Any) -> bytes:
    """A sidecar JSON file for this request."""
    return json.dumps({"prompt": "a yellow disc drifting", **request, **fields}).encode()


def drop(path: Path, data: bytes) -> float:
    """Write a temporary dot-name, then rename it into place; the wall time right after the rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.part")
    temporary.write_bytes(data)
    os.replace(temporary, path)
    return time.time()


def write_pairs(
    folder: Path, count: int, request: dict[str, Any], *, size: tuple[int, int] = (64, 64), first_index: int = 0
) -> list[Path]:
    """count images with their sidecars (seed = index) in folder; the image paths."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(first_index, first_index + count):
        (folder / f"img{index:04}.json").write_bytes(sidecar_bytes(request, seed=index))
        image = folder / f"img{index:04}.png"
        image.write_bytes(image_bytes(index, size))
        images.append(image)
    return images
