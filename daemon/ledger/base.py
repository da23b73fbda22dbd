"""The ledger protocol: where jobs live, from queued to done or failed."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol


class JobState(str, Enum):
    """A job's state: the same words in the ledger, manifests, jobs.jsonl and the logs."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass
class Job:
    """One image request and what became of it."""

    id: str
    key: str
    input: str  # path relative to the inbox, with forward slashes
    sidecar: str | None
    input_sha256: str
    sidecar_sha256: str | None
    params: dict[str, Any]
    seed: int | None
    state: JobState = JobState.QUEUED
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    output: str = ""  # output stem relative to the outbox ("a/b/photo"); decided once, at admission
    priority: int = 0  # higher runs first
    content_key: str = ""  # image bytes + effective request: finds the same work under another name


class Ledger(Protocol):
    """Enqueue, claim, finish, fail, requeue: all a runner needs."""

    def enqueue(self, job: Job) -> bool:
        """Store a new job; False (and nothing stored) if its key is already known."""

    def has_key(self, key: str) -> bool:
        """Whether a job with this key exists in any state."""

    def find_done_by_content(self, content_key: str) -> Job | None:
        """A finished job that made the same video from the same image and request, if any."""

    def claim_next(self, now: float) -> Job | None:
        """Mark the oldest queued job running and return it."""

    def finish(self, job_id: str, now: float, outputs: dict[str, str]) -> None:
        """Mark a job done with its outputs."""

    def fail(self, job_id: str, now: float, error: dict[str, Any]) -> None:
        """Mark a job failed with its error."""

    def requeue_running(self) -> list[str]:
        """Put jobs left running by a previous process back in the queue; return their ids."""

    def get(self, job_id: str) -> Job | None:
        """One job by id."""

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state."""

    def close(self) -> None:
        """Release the connection."""
