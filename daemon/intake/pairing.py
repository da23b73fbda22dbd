"""Pairing an image with its sidecar: `photo.png` ↔ `photo.json` in the same folder."""

from __future__ import annotations

from pathlib import Path

from daemon.intake.readiness import SIDECAR_SUFFIX, is_image_name, is_junk


def sidecar_for(image: Path) -> Path:
    """Where the image's sidecar is (or would be)."""
    return image.with_name(image.stem + SIDECAR_SUFFIX)


def images_for(sidecar: Path) -> list[Path]:
    """The images in the sidecar's folder that share its stem (any image extension, any case)."""
    stem = sidecar.name[: -len(SIDECAR_SUFFIX)]
    try:
        entries = list(sidecar.parent.iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if p.stem == stem and is_image_name(p.name) and not is_junk(p.name))
