"""The versions that made a video: vidrop, diffusers, torch, read from the installed metadata (no import)."""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata

PACKAGES = ("vidrop", "diffusers", "torch")


@lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    """{package: version}, None for one that is not installed; cheap: torch is not imported."""
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def version_line() -> str:
    """`vidrop 0.1.0 (diffusers 0.35.1, torch 2.8.0)`."""
    found = {name: version or "not installed" for name, version in versions().items()}
    return f"vidrop {found['vidrop']} (diffusers {found['diffusers']}, torch {found['torch']})"
