"""`vidrop validate` and `vidrop submit`: the intake's own admission, asked before (or while) dropping.

validate runs the intake's Admitter on copies of the files placed, in a private folder, where they would
stand in the inbox (with the `_defaults.json` of every folder above them), so the sidecar schema, the folder
defaults and the model's family rules apply exactly as for a dropped file. The family rules come from
model_index.json (`inspect_model`): no weights are loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from vidrop.config.errors import VidropError
from vidrop.config.settings import Settings
from vidrop.daemon.intake.admit import Admission, Admitter, job_key, sha256_of
from vidrop.daemon.intake.pending import ReadyInput
from vidrop.daemon.intake.readiness import DEFAULTS_NAME, SIDECAR_SUFFIX, FileSnapshot, JunkFilter
from vidrop.daemon.outbox import ERROR_SUFFIX, TEMP_PREFIX
from vidrop.daemon.recorder import error_fields
from vidrop.pipeline.images import IMAGE_SUFFIXES

EX_DATAERR = 65
POLL_SECONDS = 0.5


def request_rules(settings: Settings):
    """Every model on offer, looked at (model_index.json) but not loaded: what intake asks of them."""
    from vidrop.pipeline.model_set import open_models

    return open_models(settings.pipeline, limits=settings.limits, memory=settings.memory, load_default=False)


def error_document(error: VidropError) -> dict[str, Any]:
    """The fields of the error file the recorder writes for this error."""
    return error_fields(error)


def place(settings: Settings, path: Path, folder: str | None) -> PurePosixPath:
    """Where the file stands (or will stand) in the inbox, as a relative folder."""
    if folder is not None:
        return PurePosixPath(folder.strip("/"))
    try:
        return PurePosixPath(path.resolve().parent.relative_to(settings.inbox.resolve()).as_posix())
    except ValueError:
        return PurePosixPath(".")


def find_image(sidecar: Path) -> Path | None:
    """The image beside a sidecar with the same stem, as the intake pairs them."""
    for candidate in sorted(sidecar.parent.glob(f"{sidecar.stem}.*")):
        if candidate.suffix.lower() in IMAGE_SUFFIXES and candidate.is_file():
            return candidate
    return None


def admit_as_dropped(
    settings: Settings, rules, image: Path | None, sidecar: Path | None, folder: PurePosixPath
) -> list[Admission]:
    """The intake's admissions of these files, as if dropped into inbox/folder."""
    with tempfile.TemporaryDirectory(prefix="vidrop-validate-") as scratch:
        root = Path(scratch)
        target = root.joinpath(*folder.parts)
        target.mkdir(parents=True, exist_ok=True)
        for depth in range(len(folder.parts) + 1):  # every folder default from the inbox root down
            level = PurePosixPath(*folder.parts[:depth])
            defaults = settings.inbox.joinpath(*level.parts) / DEFAULTS_NAME
            if defaults.is_file():
                shutil.copyfile(defaults, root.joinpath(*level.parts) / DEFAULTS_NAME)
        copies = [None if path is None else shutil.copyfile(path, target / path.name) for path in (image, sidecar)]
        image_copy, sidecar_copy = (None if copy is None else Path(copy) for copy in copies)
        ready = ReadyInput(
            image=image_copy,
            sidecar=sidecar_copy,
            image_snapshot=None if image_copy is None else FileSnapshot.of(image_copy),
            sidecar_snapshot=None if sidecar_copy is None else FileSnapshot.of(sidecar_copy),
            stable_seconds=float("inf"),
        )
        admitter = Admitter(
            settings.model_copy(update={"inbox": root}), rules, JunkFilter(settings.intake.ignore), _unknown
        )
        return admitter.admit(ready, now=time.time())


def _unknown(_key: str) -> bool:
    return False


def validate(settings: Settings, files: list[Path], folder: str | None = None) -> tuple[int, dict[str, Any]]:
    """Exit status and the document to print: the effective request of each job, or the error file's fields."""
    sidecar = next((path for path in files if path.suffix.lower() == SIDECAR_SUFFIX), None)
    image = next((path for path in files if path.suffix.lower() != SIDECAR_SUFFIX), None)
    if image is None and sidecar is not None:
        image = find_image(sidecar)
    main = image or sidecar
    where = place(settings, main, folder)
    try:
        rules = request_rules(settings)
    except VidropError as exc:
        return 78, {"error": exc.reason, "detail": exc.detail, "what_to_do": exc.fix, "kind": "model"}
    admissions = admit_as_dropped(settings, rules, image, sidecar, where)
    refused = next((admission for admission in admissions if admission.error is not None), None)
    if refused is not None:
        return EX_DATAERR, {"state": "failed", "input": refused.job.input, **error_document(refused.error)}
    jobs = [
        {"output": admission.job.output, "priority": admission.job.priority, "parameters": admission.job.params}
        for admission in admissions
    ]
    return 0, {"state": "valid", "input": admissions[0].job.input, "jobs": jobs}


def submit(
    settings: Settings, image: Path, *, prompt: str | None, sidecar: Path | None, folder: str | None
) -> tuple[Path, str, str | None]:
    """Copy the sidecar, then the image, into the inbox under temporary names the intake ignores, each renamed
    into place: the sidecar first, so the image is paired at once. The image's place and the job's id."""
    target = settings.inbox.joinpath(*PurePosixPath((folder or "").strip("/")).parts)
    target.mkdir(parents=True, exist_ok=True)
    raw = None
    if prompt is not None:
        raw = json.dumps({"prompt": prompt}).encode()
    elif sidecar is not None:
        raw = sidecar.read_bytes()
    if raw is not None:
        _drop(target / f"{image.stem}{SIDECAR_SUFFIX}", raw)
    placed = _drop(target / image.name, image.read_bytes())
    relative = placed.relative_to(settings.inbox).as_posix()
    sidecar_sha = None if raw is None else hashlib.sha256(raw).hexdigest()
    return placed, relative, job_key(relative, sha256_of(placed), sidecar_sha)[:16]


def _drop(path: Path, data: bytes) -> Path:
    temporary = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(4)}-{path.name}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def wait_outcome(settings: Settings, relative: str, job_id: str, timeout: float | None) -> tuple[int, str]:
    """Poll the outbox for this job's manifest (done) or error file (failed)."""
    relative_path = PurePosixPath(relative)
    folder = settings.outbox.joinpath(*relative_path.parent.parts)
    stem = relative_path.stem
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        error = _document(folder / f"{stem}{ERROR_SUFFIX}")
        if error is not None and error.get("job_id") == job_id:
            return EX_DATAERR, f"{folder / (stem + ERROR_SUFFIX)}: {error['error']} {error.get('what_to_do') or ''}"
        manifest = _document(folder / f"{stem}.json")
        if manifest is not None and manifest.get("job_id") == job_id and manifest.get("state") == "done":
            video = manifest.get("outputs", {}).get("video") or f"{stem}.{manifest.get('parameters', {}).get('format')}"
            return 0, str(folder / Path(video).name)
        time.sleep(POLL_SECONDS)
    return 75, f"no outcome for {relative} (job {job_id}) after {timeout:g} s; is vidrop running? (vidrop status)"


def _document(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def print_document(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False), file=sys.stdout)
