"""A job's input between admission and disposal: read it once and check it is still the bytes the job was made
from, find it again after a move or a folder rename, and, once every job made from it has ended, keep it, move
it to a done/failed folder, or delete it."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Protocol

import structlog

from vidrop.config.settings import Settings
from vidrop.daemon.intake.admit import sha256_of
from vidrop.daemon.intake.variants import VARIANT
from vidrop.daemon.ledger.base import Job, JobState
from vidrop.daemon.names import NAME_MAX, fit_stem, name_bytes

log = structlog.get_logger()

# Files hashed at most when looking for a queued job's input after a move: a folder of thousands is not read
# through for one job (its files are then admitted as new inputs by intake, and the old job ends removed).
MAX_CANDIDATES = 200
ENDED = (JobState.DONE, JobState.FAILED)


@dataclass(frozen=True)
class InputBytes:
    """What the runner read of a job's input: the image (or the sidecar of a text job), and what it found."""

    data: bytes | None  # None: the input is not at its path
    sha256: str | None
    sidecar_sha256: str | None  # None: no sidecar at the job's sidecar path (or the job has none)

    def belongs_to(self, job: Job) -> bool:
        """Whether these are the bytes the job (its manifest, its jobs.jsonl line) names."""
        sidecar_matches = (
            job.sidecar is None or job.sidecar == job.input or self.sidecar_sha256 in (None, job.sidecar_sha256)
        )  # a sidecar gone since is no new request: the job's params are stored
        return self.sha256 == job.input_sha256 and sidecar_matches


def read_input(inbox: Path, job: Job) -> InputBytes:
    """Read the job's input once (the video is made from exactly these bytes) and hash it and its sidecar."""
    try:
        data = _inbox_path(inbox, job.input).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return InputBytes(None, None, None)
    sidecar_sha256 = None
    if job.sidecar is not None and job.sidecar != job.input:
        try:
            sidecar_sha256 = hashlib.sha256(_inbox_path(inbox, job.sidecar).read_bytes()).hexdigest()
        except (FileNotFoundError, NotADirectoryError):
            pass
    return InputBytes(data, hashlib.sha256(data).hexdigest(), sidecar_sha256)


@dataclass(frozen=True)
class MovedInput:
    """Where a queued job's input is now (paths relative to the inbox)."""

    input: str
    sidecar: str | None
    output: str | None = None  # the output stem intake chose for the new path, when it has a job there

    def output_for(self, job: Job) -> str:
        """The job's output stem moved along: same folder as the input now, the name following a renamed file."""
        if self.output is not None:
            return self.output
        old_stem, name = PurePosixPath(job.input).stem, PurePosixPath(job.output).name
        new_stem = PurePosixPath(self.input).stem
        if name.startswith(old_stem):
            name = new_stem + name[len(old_stem) :]
        return str(PurePosixPath(self.input).parent / name)


def find_moved(inbox: Path, job: Job) -> MovedInput | None:
    """The job's image and sidecar under another name in the same folder, or in a renamed folder, found by
    their content hashes; None if they are nowhere to be found."""
    old = PurePosixPath(job.input)
    for candidate in _candidates(inbox, old):
        try:
            if not candidate.is_file() or candidate.is_symlink() or sha256_of(candidate) != job.input_sha256:
                continue
        except OSError:
            continue
        relative = candidate.relative_to(inbox).as_posix()
        if job.sidecar is None:
            return MovedInput(relative, None)
        if job.sidecar == job.input:  # a text job: its input is the sidecar
            return MovedInput(relative, relative)
        sidecar = candidate.with_name(candidate.stem + PurePosixPath(job.sidecar).suffix)
        try:
            if sha256_of(sidecar) == job.sidecar_sha256:
                return MovedInput(relative, sidecar.relative_to(inbox).as_posix())
        except OSError:
            continue
    return None


def find_moved_by_ledger(inbox: Path, job: Job, same_content: list[Job]) -> MovedInput | None:
    """The job's input at the path of another job with the same content (intake queued it there), if the
    image and its sidecar there are still the same bytes: moved to any folder, not only a renamed one."""
    variant = job.params.get(VARIANT, "")
    for other in same_content:
        if (
            other.id == job.id
            or other.created_at < job.created_at
            or other.params.get(VARIANT, "") != variant
            or (other.input_sha256, other.sidecar_sha256) != (job.input_sha256, job.sidecar_sha256)
        ):
            continue
        found = read_input(inbox, other)
        if found.data is not None and found.belongs_to(other):
            return MovedInput(other.input, other.sidecar, other.output)
    return None


def _candidates(inbox: Path, old: PurePosixPath) -> Iterator[Path]:
    folder = _inbox_path(inbox, str(old.parent))
    suffix = old.suffix.lower()
    if folder.is_dir():  # the file was renamed in its folder
        entries = _listing(folder)
        yield from [p for p in entries if p.name != old.name and p.suffix.lower() == suffix][:MAX_CANDIDATES]
        return
    # The folder is gone: the same path below each folder beside the nearest one still there (a renamed folder).
    parts = old.parent.parts
    depth = len(parts) - 1
    while depth > 0 and not inbox.joinpath(*parts[:depth]).is_dir():
        depth -= 1
    ancestor, tail = inbox.joinpath(*parts[:depth]), parts[depth + 1 :]
    siblings = [p for p in _listing(ancestor) if not p.name.startswith(".") and p.is_dir() and not p.is_symlink()]
    yield from (sibling.joinpath(*tail, old.name) for sibling in siblings[:MAX_CANDIDATES])


def _listing(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def _inbox_path(inbox: Path, relative: str) -> Path:
    return inbox.joinpath(*PurePosixPath(relative).parts)


class SiblingLookup(Protocol):
    """The ledger's view of the jobs made from one input path."""

    def jobs_for_input(self, relative_input: str) -> list[Job]: ...


class InputDisposal:
    """A JobListener applying intake.on_success / on_failure once every job made from an input has ended.

    All of them done: on_success; any failed: on_failure. Never deletes anything on failure, and never touches
    a file whose bytes are no longer the ones its jobs were made from.
    """

    def __init__(self, settings: Settings, ledger: SiblingLookup) -> None:
        self.inbox = settings.inbox
        self.intake = settings.intake
        self.ledger = ledger
        self._held: list[Job] | None = None

    def apply(self, settings: Settings) -> None:
        """Fresh live settings: on_success, on_failure and their folders from now on."""
        self.intake = settings.intake

    @contextmanager
    def held(self) -> Iterator[None]:
        """While an input's jobs are being stored (some refused, some reused at once, the rest not yet in the
        ledger), decide nothing; decide once, after the last one."""
        outer, self._held = self._held, []
        try:
            yield
        finally:
            held, self._held = self._held, outer
            for job in {job.input: job for job in held}.values():
                self._decide(job)

    def job_changed(self, job: Job, state: JobState, details: dict[str, Any]) -> None:
        if state not in ENDED or (self.intake.on_success == "keep" and self.intake.on_failure == "keep"):
            return
        if self._held is not None:
            self._held.append(job)
        else:
            self._decide(job)

    def _decide(self, job: Job) -> None:
        siblings = [
            other
            for other in self.ledger.jobs_for_input(job.input)
            if (other.input_sha256, other.sidecar_sha256) == (job.input_sha256, job.sidecar_sha256)
        ]
        if not siblings or any(other.state not in ENDED for other in siblings):
            return  # the last of them decides
        if any(other.state is JobState.FAILED for other in siblings):
            if self.intake.on_failure == "move":
                self._dispose(job, "move", self.intake.failed_dir, len(siblings))
        elif self.intake.on_success != "keep":
            self._dispose(job, self.intake.on_success, self.intake.done_dir, len(siblings))

    def _dispose(self, job: Job, action: str, target_root: Path, jobs: int) -> None:
        paths = [(job.input, job.input_sha256)]
        if job.sidecar and job.sidecar != job.input and not self._is_shared(job):
            paths.append((job.sidecar, job.sidecar_sha256))
        sources = [(relative, _inbox_path(self.inbox, relative), sha) for relative, sha in paths]
        for relative, source, sha in sources:
            if source.is_file() and _sha256_or_none(source) != sha:
                log.info(
                    "input_kept",
                    job_id=job.id,
                    input=relative,
                    action=action,
                    reason="changed since it was taken; its new bytes are a job of their own",
                )
                return
        for relative, source, _ in sources:
            if not source.is_file():
                continue
            if action == "delete":
                source.unlink()
                log.info("input_deleted", job_id=job.id, input=relative, jobs=jobs)
                continue
            target = target_root.joinpath(*PurePosixPath(relative).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():  # keep both; the job id makes the name unique, shortened to fit if need be
                tail = f".{job.id}{target.suffix}"
                target = target.with_name(f"{fit_stem(target.stem, NAME_MAX - len(name_bytes(tail)))}{tail}")
            try:
                os.replace(source, target)
            except OSError:  # another filesystem: copy, then remove
                shutil.copy2(source, target)
                source.unlink()
            log.info("input_moved", job_id=job.id, input=relative, to=str(target), jobs=jobs)

    def _is_shared(self, job: Job) -> bool:
        """Whether another image still in the folder uses the same sidecar (a.png and a.jpg share a.json)."""
        image = _inbox_path(self.inbox, job.input)
        return any(
            p.stem == image.stem and p != image
            for p in image.parent.glob(f"{glob.escape(image.stem)}.*")
            if p.suffix.lower() != ".json"
        )


def _sha256_or_none(path: Path) -> str | None:
    try:
        return sha256_of(path)
    except OSError:
        return None
