"""The designer's own picture on a card until the video's thumbnail exists: a small JPEG of the source image,
made when the input is admitted, kept in a hidden folder beside the outputs, and removed once the job is done.

`outbox/acme/.vidrop-sources/photo.jpg` for `inbox/acme/photo.png` (the output stem, so variants and renamed
outputs have their own). A dot-folder: Finder hides it (Samba too, by default, for Windows), and no inbox folder
can have its name (intake never takes hidden names), so it never meets a designer's files (with the default
`intake.ignore`).
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog
from PIL import Image, ImageOps

from vidrop.daemon.ledger.base import Job
from vidrop.daemon.outbox import OutputNames, _temporary
from vidrop.pipeline.encode import THUMBNAIL_LONGEST_SIDE
from vidrop.pipeline.images import to_rgb

log = structlog.get_logger()

SOURCES_FOLDER = ".vidrop-sources"


def source_name(names: OutputNames) -> str:
    """The source thumbnail's path relative to the card's folder (what a page links to)."""
    return f"{SOURCES_FOLDER}/{names.stem}.jpg"


class SourceThumbnails:
    """Makes and removes source thumbnails; trouble is logged, never raised (the card then shows words instead of
    a picture, and the job goes on)."""

    def __init__(self, outbox: Path, *, max_pixels: int) -> None:
        self.outbox = outbox
        self.max_pixels = max_pixels

    def make(self, job: Job, names: OutputNames, image: Path) -> None:
        """At admission: the thumbnail of the job's source image, unless it exists already (a job queued again)."""
        target = names.folder / source_name(names)
        if target.is_file() or not self.outbox.is_dir():  # an unmounted share is never made again locally
            return
        for last_try in (False, True):  # once more if another instance removed the emptied folder meanwhile
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                temporary = _temporary(target.parent, target.name)
                try:
                    _write_thumbnail(image, temporary, max_pixels=self.max_pixels)
                    os.replace(temporary, target)
                finally:
                    temporary.unlink(missing_ok=True)
                return
            except FileNotFoundError as exc:
                if last_try:
                    log.info("source_thumbnail_failed", job_id=job.id, input=job.input, error=str(exc))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                log.info("source_thumbnail_failed", job_id=job.id, input=job.input, error=str(exc))
                return


def remove_source(names: OutputNames) -> None:
    """Once the job is done its own thumbnail shows instead; the hidden folder goes with its last picture, so a
    finished folder holds only the outputs."""
    thumbnail = names.folder / source_name(names)
    try:
        thumbnail.unlink(missing_ok=True)
    except OSError as exc:
        log.info("source_thumbnail_not_removed", file=str(thumbnail), error=str(exc))
        return
    try:
        thumbnail.parent.rmdir()
    except OSError:
        pass  # other pictures still wait in it (or it is gone already)


def _write_thumbnail(image: Path, target: Path, *, max_pixels: int) -> None:
    with Image.open(image) as opened:
        if opened.width * opened.height > max_pixels:
            raise ValueError(f"{opened.width}×{opened.height} pixels exceeds limits.max_image_pixels")
        side = THUMBNAIL_LONGEST_SIDE
        opened.draft("RGB", (side * 2, side * 2))  # JPEG: decode at a fraction of the size, far faster
        picture = to_rgb(ImageOps.exif_transpose(opened))
    picture.thumbnail((side, side), Image.Resampling.LANCZOS)
    picture.save(target, format="JPEG", quality=85)
