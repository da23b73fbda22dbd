"""Turning a complete image and its sidecar (or a sidecar alone) into jobs.

Hash, merge defaults, validate, decide the keys.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from vidrop.config.errors import InputError, VidropError
from vidrop.config.request import SEED_MAX
from vidrop.config.settings import Settings
from vidrop.config.sidecar import parse_sidecar
from vidrop.daemon.intake.pairing import expand_placeholders, folder_defaults, output_stem, text_output_stem
from vidrop.daemon.intake.pending import ReadyInput
from vidrop.daemon.intake.readiness import JunkFilter
from vidrop.daemon.intake.variants import VARIANT, Request, expand
from vidrop.daemon.ledger.base import Job, JobState
from vidrop.daemon.names import shown
from vidrop.pipeline.generate import IMAGE, TEXT, JobParams, RequestRules
from vidrop.pipeline.images import ImageFacts, check_readable_name, open_image

HASH_CHUNK = 1 << 20


class NotReadyYet(Exception):
    """The image does not decode, but it changed so recently that it may still be arriving."""


@dataclass
class Admission:
    """A job to store, and the reason it is refused if it is; `is_known`: the ledger already has it."""

    job: Job
    error: VidropError | None = None
    is_known: bool = False


def sha256_of(path: Path) -> str:
    """The file's content hash."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def job_key(relative_input: str, input_sha256: str, sidecar_sha256: str | None, suffix: str = "") -> str:
    """Same input path, same image bytes, same sidecar bytes (and the same variant): same job.

    Settings and `_defaults.json` are left out on purpose: changing a default must not rerun
    every finished job.
    """
    material = json.dumps([relative_input, input_sha256, sidecar_sha256] + ([suffix] if suffix else []))
    return hashlib.sha256(material.encode()).hexdigest()


def content_key(input_sha256: str, params: JobParams) -> str:
    """Same image bytes and same effective request: the same video, whatever the file is called."""
    material = json.dumps([input_sha256, params.to_dict()], sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


class Admitter:
    """Builds jobs from ready inputs with the current settings and the loaded model's family rules."""

    def __init__(
        self, settings: Settings, generator: RequestRules, is_junk: JunkFilter, is_known: Callable[[str], bool]
    ) -> None:
        self.settings = settings
        self.generator = generator
        self.is_junk = is_junk
        self.is_known = is_known

    def admit(self, ready: ReadyInput, *, now: float) -> list[Admission]:
        """Hash, merge defaults and sidecar, validate, and build the jobs: one, or one per variant and seed.

        A sidecar alone becomes text-to-video jobs when the model makes videos from text.
        """
        inbox = self.settings.inbox
        limits = self.settings.limits
        main = ready.image or ready.sidecar
        relative = main.relative_to(inbox).as_posix()
        if ready.image is not None and ready.image_snapshot.size > limits.max_image_bytes:
            input_sha256 = f"size:{ready.image_snapshot.size}"
        else:
            input_sha256 = sha256_of(main)
        sidecar_raw, sidecar_sha256 = _read_sidecar(ready.sidecar, limits.max_sidecar_bytes)
        output = ""  # decided below, once the key is known to be new: it lists the folder

        def new_job(suffix: str) -> Job:
            key = job_key(relative, input_sha256, sidecar_sha256, suffix)
            return Job(
                id=key[:16],
                key=key,
                input=relative,
                sidecar=None if ready.sidecar is None else ready.sidecar.relative_to(inbox).as_posix(),
                input_sha256=input_sha256,
                sidecar_sha256=sidecar_sha256,
                params={},
                seed=None,
                created_at=now,
                output=output + suffix,
            )

        job = new_job("")
        if self.is_known(job.key):  # seen before: skip validation and decoding (a restart over a big inbox)
            return [Admission(job, is_known=True)]
        stem = output_stem(main, self.is_junk) if ready.image is not None else text_output_stem(main)
        output = str(PurePosixPath(relative).parent / stem)
        job.output = output
        mode = TEXT if ready.image is None else IMAGE
        facts = None
        try:
            if ready.image is not None:
                check_readable_name(ready.image)  # before the prompt: a PSD is refused for what it is
            if ready.sidecar_conflict:
                raise _conflicting_sidecars(ready, relative)
            requests = self._requests(main, sidecar_raw)
            self._check_usable(ready, relative, requests)
            jobs = [(request, new_job(request.suffix)) for request in requests]
            if all(self.is_known(job.key) for _, job in jobs):
                return [Admission(job, is_known=True) for _, job in jobs]
            if ready.image is not None:
                facts = self._check_decodes(ready)
        except VidropError as exc:  # a sidecar's own error too: an input error like any other
            return [_refused(job, exc, now)]
        return [self._build(job, request, mode, now, facts) for request, job in jobs]

    def _check_usable(self, ready: ReadyInput, relative: str, requests: list[Request]) -> None:
        """A prompt file alone for a model that needs an image, or an image over the size limit: refused."""
        main, limits = ready.image or ready.sidecar, self.settings.limits
        if ready.image is None and not any(
            TEXT in self.generator.modes(request.fields.get("model")) for request in requests
        ):
            raise InputError(
                "This prompt file has no image next to it, so vidrop has nothing to animate.",
                detail=f"no image named {main.stem}.png/.jpg/... beside {relative}, and the model "
                "cannot start from a prompt alone",
                fix=f"Put the image next to it with the same name, e.g. {main.stem}.png.",
            )
        if ready.image is not None and ready.image_snapshot.size > limits.max_image_bytes:
            raise InputError(
                f"The image file is too large ({ready.image_snapshot.size} bytes).",
                detail=f"{ready.image_snapshot.size} bytes exceeds limits.max_image_bytes={limits.max_image_bytes}",
                fix="Export the image at a smaller size or with compression (PNG or JPEG).",
            )

    def _build(self, job: Job, request: Request, mode: str, now: float, facts: ImageFacts | None = None) -> Admission:
        """One job of a sidecar, resolved against the family (a variant may be refused alone)."""
        if self.is_known(job.key):
            return Admission(job, is_known=True)
        fields = dict(request.fields)
        job.priority = int(fields.pop("priority", 0))
        try:
            params = self.generator.resolve({**fields, "mode": mode})
        except VidropError as exc:
            return _refused(job, exc, now)
        job.params = {**params.to_dict(), **({VARIANT: request.suffix} if request.suffix else {})}
        if facts is not None and facts.is_animated:  # said in the manifest's adjustments
            job.params["adjustments"] = [
                *job.params.get("adjustments", ()),
                {
                    "field": "image",
                    "requested": f"animated {facts.format}, {facts.frames} frames",
                    "used": "first frame",
                    "frames_in_file": facts.frames,
                    "rule": "a video is made from one still image: an animated file's first frame",
                },
            ]
        job.content_key = content_key(job.input_sha256, params)
        job.seed = params.seed if params.seed is not None else secrets.randbelow(SEED_MAX + 1)
        return Admission(job)

    def _requests(self, main: Path, sidecar_raw: bytes | None) -> list[Request]:
        max_bytes = self.settings.limits.max_sidecar_bytes
        defaults = self.settings.generation.model_dump(exclude_none=True)
        folder_values = folder_defaults(main.parent, self.settings.inbox, max_bytes=max_bytes)
        defaults.update({name: value for name, value in folder_values.items() if name not in ("seeds", "variants")})
        sidecar = None
        if sidecar_raw is not None:
            sidecar = parse_sidecar(sidecar_raw, max_bytes=max_bytes)
        elif not defaults.get("prompt"):
            raise InputError(
                "This image has no prompt file, so vidrop does not know what video to make.",
                detail="no sidecar NAME.json next to the image, no prompt in a _defaults.json above it "
                "and no default prompt in the settings",
                fix="Put a JSON file with the same name next to the image, for example photo.json "
                'containing {"prompt": "slow camera push-in"}, or a _defaults.json in the folder.',
            )
        folder = main.parent.name if main.parent != self.settings.inbox else ""
        # A prompt is text for the model and the manifest: a name's undecodable bytes go in as \xHH.
        return [
            Request(request.suffix, expand_placeholders(request.fields, stem=shown(main.stem), folder=shown(folder)))
            for request in expand(defaults, sidecar, self.generator.preset)
        ]

    def _check_decodes(self, ready: ReadyInput) -> ImageFacts:
        """Decode the whole image; one that fails while it may still be arriving (seen unchanged for less
        than the decode grace, by our own clock) is not ready yet, and one whose end is still missing after
        the grace is refused."""
        try:
            _, facts = open_image(ready.image, max_pixels=self.settings.limits.max_image_pixels)
        except InputError:
            if ready.stable_seconds < self.settings.intake.decode_grace_seconds:
                raise NotReadyYet(str(ready.image)) from None
            raise
        if ready.unfinished is not None and ready.unfinished.is_certain:
            raise InputError(
                "The image file is incomplete: the copy seems to have stopped before the end.",
                detail=f"{ready.unfinished.reason}; unchanged for {ready.stable_seconds:.0f} s "
                f"(intake.decode_grace_seconds={self.settings.intake.decode_grace_seconds:g})",
                fix="Copy the file into the folder again and let the copy finish.",
            )
        return facts


def _read_sidecar(path: Path | None, max_bytes: int) -> tuple[bytes | None, str | None]:
    if path is None:
        return None, None
    with open(path, "rb") as handle:
        raw = handle.read(max_bytes + 1)
    return raw, hashlib.sha256(raw).hexdigest()


def _refused(job: Job, error: VidropError, now: float) -> Admission:
    job.state = JobState.FAILED
    job.finished_at = now
    return Admission(job, error)


def _conflicting_sidecars(ready: ReadyInput, relative: str) -> InputError:
    names = " and ".join(path.name for path in ready.sidecar_conflict)
    return InputError(
        "This image has more than one prompt file, so vidrop does not know which one to use.",
        detail=f"sidecars {names} beside {relative} differ only in the case of their extension",
        fix=f"Keep one of {names} and delete the other.",
    )
