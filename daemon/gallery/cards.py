"""Cards: what the gallery shows about one job, in plain words, built from the ledger and live progress."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vidrop.config.settings import DEFAULT_MODEL_NAME
from vidrop.daemon.gallery.sources import source_name
from vidrop.daemon.ledger.base import Job, JobState
from vidrop.daemon.outbox import OutputNames, iso_time

STATE_WORDS = {
    JobState.QUEUED: "waiting",
    JobState.RUNNING: "running",
    JobState.DONE: "done",
    JobState.FAILED: "failed",
}
PARAMETER_KEYS = ("width", "height", "num_frames", "fps", "steps", "guidance_scale", "format")


@dataclass(frozen=True)
class Progress:
    """The last step the running job reported."""

    step: int
    total: int
    started: float  # monotonic time the job started
    at: float  # monotonic time of this step


@dataclass
class Estimates:
    """What the whole queue looks like now; shared by every card on a page."""

    positions: dict[str, int]  # queued job id → 1-based place in claim order
    average_seconds: float | None  # of recent finished jobs, None before the first
    running_left: float  # seconds the running job still needs (0 when none)

    def starts_in(self, position: int) -> float | None:
        """Seconds until the job at this 1-based place in the queue starts."""
        if self.average_seconds is None:
            return None
        return self.running_left + (position - 1) * self.average_seconds

    @property
    def drain_seconds(self) -> float | None:
        """Seconds until everything queued has run."""
        return self.starts_in(len(self.positions) + 1) if self.positions else self.running_left


@dataclass
class Card:
    """One job as people on the share see it; `to_json` is its _status.json form."""

    job_id: str
    input: str
    name: str
    state: str
    words: str
    prompt: str | None
    parameters: dict[str, Any]
    created_at: str
    finished_at: str | None = None
    queue_position: int | None = None
    starts_in_seconds: float | None = None
    step: int | None = None
    total_steps: int | None = None
    seconds_left: float | None = None
    duration_seconds: float | None = None
    error: str | None = None
    what_to_do: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # names in the card's folder that exist now
    sound: bool = False  # the video has a sound track: the card plays it, muted until clicked
    text_only: bool = False  # made from a prompt alone (a sidecar without an image): no picture of its own

    def to_json(self) -> dict[str, Any]:
        # A shallow copy: its values are plain data already, and asdict's deep copy made it 10× slower.
        return dict(vars(self))


def folder_of(relative_input: str) -> str:
    """The inbox folder of an input ("" at the top), which is also its outbox folder."""
    parent = PurePosixPath(relative_input).parent.as_posix()
    return "" if parent == "." else parent


def make_card(
    job: Job, *, names: OutputNames, estimates: Estimates, progress: Progress | None, now_monotonic: float
) -> Card:
    """Turn a ledger job into a card; links only name files that exist in the folder now."""
    params = job.params or {}
    parameters = {key: params[key] for key in PARAMETER_KEYS if key in params}
    if params.get("model") not in (None, "", DEFAULT_MODEL_NAME):  # several models on offer: say which
        parameters = {"model": params["model"], **parameters}
    if job.seed is not None:
        parameters["seed"] = job.seed
    card = Card(
        job_id=job.id,
        input=job.input,
        name=PurePosixPath(job.input).name,
        state=job.state.value,
        words=STATE_WORDS[job.state],
        prompt=params.get("prompt"),
        parameters=parameters,
        created_at=iso_time(job.created_at),
        finished_at=None if job.finished_at is None else iso_time(job.finished_at),
        text_only=job.sidecar is not None and job.sidecar == job.input,  # the sidecar was the input
    )
    if job.state is JobState.QUEUED and job.id in estimates.positions:
        card.queue_position = estimates.positions[job.id]
        card.starts_in_seconds = _rounded(estimates.starts_in(card.queue_position))
    elif job.state is JobState.RUNNING:
        if progress is not None:
            card.step, card.total_steps = progress.step, progress.total
        card.seconds_left = _rounded(running_left(progress, estimates.average_seconds, now_monotonic))
    elif job.state is JobState.DONE:
        if job.started_at is not None and job.finished_at is not None:
            card.duration_seconds = round(job.finished_at - job.started_at, 1)
        card.files = _existing(names.folder, {kind: Path(path).name for kind, path in job.outputs.items()})
        card.sound = bool(params.get("audio")) and "video" in card.files
    elif job.state is JobState.FAILED:
        error = job.error or {}
        card.error, card.what_to_do = error.get("error"), error.get("what_to_do")
        card.files = _existing(names.folder, {"error": names.error.name})
    if job.state is not JobState.DONE and not card.text_only:  # the designer's picture until the video's own
        card.files.update(_existing(names.folder, {"source": source_name(names)}))
    return card


def running_left(progress: Progress | None, average_seconds: float | None, now_monotonic: float) -> float | None:
    """Seconds the running job still needs: from its own pace once it has made a step, else the average."""
    if progress is not None and progress.step > 0:
        per_step = (progress.at - progress.started) / progress.step
        return max(0.0, per_step * (progress.total - progress.step))
    if progress is not None and average_seconds is not None:
        return max(0.0, average_seconds - (now_monotonic - progress.started))
    return average_seconds


def _existing(folder: Path, files: dict[str, str]) -> dict[str, str]:
    return {kind: name for kind, name in files.items() if (folder / name).is_file()}


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)
