"""Pairing an image with its sidecar (`photo.png` ↔ `photo.json`) and with the `_defaults.json` above it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from vidrop.config.errors import SidecarError
from vidrop.config.sidecar import parse_sidecar
from vidrop.daemon.intake.readiness import DEFAULTS_NAME, SIDECAR_SUFFIX, FileSnapshot, is_image_name, is_input_name
from vidrop.daemon.outbox import is_output_like
from vidrop.pipeline.images import sniff_format

PLACEHOLDER_FIELDS = ("prompt", "negative_prompt")


class FolderNames:
    """Folder listings shared by the pairing questions of one tick (each image in a folder asks about it).

    Cleared every tick, not kept by folder mtime: a name added within the mtime's granularity would be missed.
    """

    def __init__(self) -> None:
        self._names: dict[Path, list[str]] = {}

    def __call__(self, folder: Path) -> list[str]:
        names = self._names.get(folder)
        if names is None:
            try:
                names = os.listdir(folder)
            except OSError:
                names = []
            self._names[folder] = names
        return names

    def clear(self) -> None:
        self._names.clear()


def sidecar_for(image: Path) -> Path:
    """Where the image's sidecar would be by default (photo.png → photo.json)."""
    return image.with_name(image.stem + SIDECAR_SUFFIX)


def sidecars_for(image: Path, names: Callable[[Path], list[str]] | None = None) -> list[Path]:
    """The image's sidecars: its stem with `.json` in any case (Windows tools write SHOT.JSON, Banner.Json).

    More than one (a.json and a.JSON on a case-sensitive share) is a conflict the admission refuses.
    """
    wanted = image.stem + SIDECAR_SUFFIX
    listed = names(image.parent) if names is not None else FolderNames()(image.parent)
    found = [
        name
        for name in listed
        if len(name) == len(wanted) and name.startswith(image.stem) and name.lower().endswith(SIDECAR_SUFFIX)
    ]
    return [image.with_name(name) for name in sorted(found)]


def images_for(sidecar: Path, is_junk: Callable[[str], bool]) -> list[Path]:
    """The images in the sidecar's folder that share its stem (any image extension, any case)."""
    stem = sidecar.name[: -len(SIDECAR_SUFFIX)]
    try:
        entries = list(sidecar.parent.iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if p.stem == stem and is_image_name(p.name) and not is_junk(p.name))


def unknown_images_for(sidecar: Path, is_junk: Callable[[str], bool]) -> list[Path]:
    """Files beside a lone sidecar with its stem, no image extension and an image format's first bytes
    (`photo` or `photo.jpg_large` from a browser): a prompt for them must not become a text-only job."""
    stem = sidecar.name[: -len(SIDECAR_SUFFIX)]
    try:
        entries = [
            p
            for p in sidecar.parent.iterdir()
            if p != sidecar
            and (p.name == stem or p.name.startswith(stem + "."))
            and not is_input_name(p.name)
            and not is_junk(p.name)
        ]
    except OSError:
        return []
    found = []
    for path in entries:
        if FileSnapshot.of(path) is None:
            continue
        try:
            with open(path, "rb") as handle:
                head = handle.read(64)
        except OSError:
            continue
        if sniff_format(head) is not None:
            found.append(path)
    return sorted(found)


def output_stem(image: Path, is_junk: Callable[[str], bool]) -> str:
    """`photo` for photo.png; `photo_jpg` when another image in the folder is also called `photo`, or when
    the stem looks like vidrop's own names (`field.error_png`, `look_png_png`: `is_output_like`)."""
    try:
        siblings = [
            p
            for p in image.parent.iterdir()
            if p.stem == image.stem and p.name != image.name and is_image_name(p.name) and not is_junk(p.name)
        ]
    except OSError:
        siblings = []
    if not siblings and not is_output_like(image.stem):
        return image.stem
    extension = image.suffix.lstrip(".")
    if not any(p.suffix.lower() == image.suffix.lower() for p in siblings):  # photo.PNG beside photo.png: as is
        extension = extension.lower()
    return f"{image.stem}_{extension}"


def text_output_stem(sidecar: Path) -> str:
    """The output stem of a prompt alone: its stem, or `NAME_json` when that looks like vidrop's own names."""
    stem = sidecar.name[: -len(SIDECAR_SUFFIX)]
    return f"{stem}_json" if is_output_like(stem) else stem


def folder_defaults(folder: Path, inbox: Path, *, max_bytes: int) -> dict[str, Any]:
    """Every `_defaults.json` from the inbox root down to folder, merged key by key (the nearest wins)."""
    merged: dict[str, Any] = {}
    chain = [folder, *folder.parents]
    for current in reversed(chain[: chain.index(inbox) + 1] if inbox in chain else [folder]):
        path = current / DEFAULTS_NAME
        if FileSnapshot.of(path) is None:
            continue
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)
        try:
            defaults = parse_sidecar(raw, max_bytes=max_bytes)
        except SidecarError as exc:
            where = path.relative_to(inbox).as_posix()
            raise SidecarError(
                f"The folder defaults file {where} cannot be used: {exc.reason}",
                detail=f"{where}: {exc.detail}",
                fix=exc.fix,
            ) from None
        merged.update(defaults.model_dump(exclude_none=True))
    return merged


def expand_placeholders(values: dict[str, Any], *, stem: str, folder: str) -> dict[str, Any]:
    """Put the image's name and folder name into `{stem}` and `{folder}` (and nothing else: no format())."""
    expanded = dict(values)
    for name in PLACEHOLDER_FIELDS:
        if isinstance(expanded.get(name), str):
            expanded[name] = expanded[name].replace("{stem}", stem).replace("{folder}", folder)
    return expanded
