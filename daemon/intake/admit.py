"""Turning a complete image (and its sidecar) into a job: hash, validate, decide the key."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.settings import Settings
from config.sidecar import SEED_MAX, Sidecar, SidecarError, parse_sidecar
from daemon.intake.pending import ReadyInput
from daemon.ledger.base import Job, JobState
from pipeline.errors import InputError, VidropError
from pipeline.generate import Generator
from pipeline.images import load_image

HASH_CHUNK = 1 << 20


@dataclass
class Admission:
    """A job to store, and the reason it is refused if it is."""

    job: Job
    error: VidropError | None = None


def sha256_of(path: Path) -> str:
    """The file's content hash."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def job_key(relative_input: str, input_sha256: str, sidecar_sha256: str | None) -> str:
    """Same output path, same image bytes, same sidecar bytes: same job.

    Parameters that come from settings are left out on purpose: changing a default must not rerun
    every finished job at the next start.
    """
    material = json.dumps([relative_input, input_sha256, sidecar_sha256])
    return hashlib.sha256(material.encode()).hexdigest()


def admit(ready: ReadyInput, *, inbox: Path, settings: Settings, generator: Generator, now: float) -> Admission:
    """Hash the files, validate sidecar and image, and build the job (queued, or failed with its error)."""
    relative = ready.image.relative_to(inbox).as_posix()
    input_sha256 = sha256_of(ready.image)
    sidecar_raw, sidecar_sha256 = _read_sidecar(ready.sidecar, settings.limits.max_sidecar_bytes)
    key = job_key(relative, input_sha256, sidecar_sha256)
    job = Job(
        id=key[:16], key=key, input=relative,
        sidecar=None if ready.sidecar is None else ready.sidecar.relative_to(inbox).as_posix(),
        input_sha256=input_sha256, sidecar_sha256=sidecar_sha256, params={}, seed=None, created_at=now,
    )
    try:
        requested = _requested(settings, sidecar_raw, settings.limits.max_sidecar_bytes)
        params = generator.resolve(requested)
        load_image(ready.image, max_pixels=settings.limits.max_image_pixels)
    except SidecarError as exc:
        return _refused(job, InputError(exc.reason, detail=exc.detail, fix=exc.fix), now)
    except VidropError as exc:
        return _refused(job, exc, now)
    job.params = params.to_dict()
    job.seed = params.seed if params.seed is not None else secrets.randbelow(SEED_MAX + 1)
    return Admission(job)


def _read_sidecar(path: Path | None, max_bytes: int) -> tuple[bytes | None, str | None]:
    if path is None:
        return None, None
    with open(path, "rb") as handle:
        raw = handle.read(max_bytes + 1)
    return raw, hashlib.sha256(raw).hexdigest()


def _requested(settings: Settings, sidecar_raw: bytes | None, max_bytes: int) -> dict[str, Any]:
    requested = settings.generation.model_dump(exclude_none=True)
    if sidecar_raw is None:
        if not requested.get("prompt"):
            raise InputError(
                "This image has no prompt file, so vidrop does not know what video to make.",
                detail="no sidecar NAME.json next to the image and no default prompt in the settings",
                fix='Put a JSON file with the same name next to the image, for example photo.json '
                    'containing {"prompt": "slow camera push-in"}.',
            )
        return requested
    sidecar: Sidecar = parse_sidecar(sidecar_raw, max_bytes=max_bytes)
    requested.update(sidecar.model_dump(exclude_none=True))
    return requested


def _refused(job: Job, error: VidropError, now: float) -> Admission:
    job.state = JobState.FAILED
    job.finished_at = now
    return Admission(job, error)
