"""The ledger protocol: where jobs live, from queued to done or failed, and who holds each one."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterator, Protocol, Sequence


class JobState(str, Enum):
    """A job's state: the same words in the ledger, manifests, jobs.jsonl and the logs."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class LedgerUnavailable(Exception):
    """The ledger cannot be read or written now (full or read-only disk, a lock held too long, a deleted file,
    a database restarting or out of reach): nothing is wrong with the job; wait, then go on."""

    def __init__(self, reason: str, *, detail: str, fix: str) -> None:
        super().__init__(f"{reason} ({detail})")
        self.reason = reason
        self.detail = detail
        self.fix = fix


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
    lease_owner: str | None = None  # the instance that holds the running job
    lease_expires_at: float | None = None
    claims: int = 0  # the fencing token: this claim's number; every claim counts up, nothing resets it
    lost_attempts: int = 0  # attempts that ended with their process dying or losing its lease
    cancel: dict[str, Any] | None = None  # `vidrop cancel`: {"by": "user@host", "at": epoch}; never claimed again


@dataclass(frozen=True)
class TakenInput:
    """An input intake took, as stat saw it then: unchanged since, it needs no second look (not even a hash)."""

    path: str  # the image, or a sidecar alone, relative to the inbox
    input_stat: str  # FileSnapshot.stamp of that file
    sidecar_stat: str | None  # and of its sidecar, if it had one
    job_key: str  # a job it became: the snapshot counts only while that job is in the ledger
    taken_at: float


@dataclass
class Instance:
    """One running `vidrop` process: which host, which process, which GPU, and what it says it is doing."""

    id: str
    host: str
    pid: int
    device: str
    started_at: float
    seen_at: float = 0.0
    status: str = ""


@dataclass
class RunningJob:
    """A running job with the instance that holds it (for `vidrop status`)."""

    job: Job
    instance: Instance | None


class QueueMode(str, Enum):
    """The fleet's queue control (`vidrop pause`, `drain`, `resume`), one row in the ledger."""

    RUNNING = "running"  # jobs are claimed as they come
    PAUSED = "paused"  # intake queues files; no job starts (a running one finishes)
    DRAINING = "draining"  # jobs queued before the drain run; later ones wait until `vidrop resume`


@dataclass(frozen=True)
class QueueControl:
    """The queue's mode, who set it and when; draining: jobs queued up to drain_before still run."""

    mode: QueueMode = QueueMode.RUNNING
    changed_by: str = ""
    changed_at: float = 0.0
    drain_before: float | None = None

    @property
    def is_held(self) -> bool:
        """Whether some queued jobs wait for `vidrop resume`."""
        return self.mode is not QueueMode.RUNNING


@dataclass
class LedgerStatus:
    """What `vidrop status` shows: the queue, the instances, recent failures, throughput."""

    counts: dict[str, int]
    instances: list[Instance]
    running: list[RunningJob]
    recent_failures: list[Job]
    done_last_hour: int
    control: QueueControl = field(default_factory=QueueControl)
    runnable: int = 0  # queued jobs the control lets start (all of them while running)


class Ledger(Protocol):
    """Enqueue, claim under a lease, renew, finish, fail, release: all a runner needs.

    Any call may raise LedgerUnavailable; the same ledger object works again once the fault is gone.
    """

    def enqueue(self, job: Job) -> bool:
        """Store a new job; False (and nothing stored) if its key is already known."""

    def has_key(self, key: str) -> bool:
        """Whether a job with this key exists in any state."""

    def done_by_content(self, content_key: str, limit: int = 5) -> list[Job]:
        """Finished jobs that made the same video from the same image and request, the latest first."""

    def jobs_by_content(self, content_key: str, limit: int = 20) -> list[Job]:
        """Jobs in any state with this content key (image bytes and effective request), the newest first."""

    def move_job(self, job_id: str, *, key: str, input: str, sidecar: str | None, output: str) -> bool:
        """A queued job's input moved: point the job at the new path (a queued job there gives way).
        False, and the job removed, when a job for the new path has started or ended already."""

    def requeued_refusals(self) -> list[Job]:
        """Refusals `vidrop retry` queued again: intake reads their inputs again (they have no params to run)."""

    def jobs_for_input(self, relative_input: str) -> list[Job]:
        """Every job of one input path, oldest first (its seeds and variants, and earlier versions)."""

    def forget(self, job_id: str) -> None:
        """Remove a job (a refusal whose error file could not be written: intake looks at it again)."""

    def remember_inputs(self, inputs: list[TakenInput]) -> None:
        """Store (or replace, by path) the snapshots of inputs intake took."""

    def taken_inputs(self) -> Iterator[tuple[str, str, str | None]]:
        """(path, input_stat, sidecar_stat) of each remembered input whose job still exists."""

    def forget_inputs(self, paths: list[str]) -> None:
        """Drop the snapshots of inputs that left the inbox."""

    def queued_count(self) -> int:
        """How many jobs are queued (cheap: the loop asks at every turn)."""

    def claim_next(
        self,
        owner: str,
        now: float,
        lease_seconds: float,
        *,
        prefer_models: Sequence[str] = (),
        patience_seconds: float = 0.0,
        prefer_loras: Sequence[str] = (),
    ) -> Job | None:
        """Atomically take the next queued job, or one whose lease expired, under a lease for owner.

        The highest priority first; within one priority, jobs for `prefer_models` (the loaded ones) before
        older jobs for other models, unless those have waited longer than `patience_seconds`; among the
        preferred models' jobs, those whose LoRA set (`lora_set`) is in `prefer_loras` first.
        """

    def control(self) -> QueueControl:
        """The fleet's queue control (paused, draining, running), as the last `vidrop` command set it."""

    def set_control(self, mode: QueueMode, *, by: str, now: float) -> QueueControl:
        """Pause, drain or resume the whole fleet's queue; draining keeps the jobs queued until now."""

    def runnable_count(self) -> int:
        """Queued jobs the control lets start, plus cancelled ones waiting to be recorded: the loop's work."""

    def request_cancel(self, job_ids: Sequence[str], request: dict[str, Any]) -> list[Job]:
        """Mark queued or running jobs cancelled (who, when); return those marked, as they were."""

    def cancel_request(self, job_id: str) -> dict[str, Any] | None:
        """The cancel request of a job, if it has one (the running job's holder asks between two steps)."""

    def claim_cancelled(self, owner: str, now: float, lease_seconds: float) -> Job | None:
        """Take a cancelled job no one runs (queued, or its lease expired) under a lease, to record it."""

    def set_priority(self, job_ids: Sequence[str], priority: int) -> list[Job]:
        """Give queued jobs a new priority (higher runs first); return those changed, as they are now."""

    def renew(self, job_id: str, owner: str, now: float, lease_seconds: float, token: int | None = None) -> bool:
        """Extend owner's lease on a running job; False if owner no longer holds it (under that claim token)."""

    def release(self, job_id: str, owner: str, token: int | None = None) -> bool:
        """Put a job owner holds back in the queue (interrupted, or the outbox is unavailable)."""

    def finish(
        self, job_id: str, now: float, outputs: dict[str, str], owner: str | None = None, token: int | None = None
    ) -> bool:
        """Mark a job done; with owner, only while owner holds it (with token, under that claim). False if
        nothing changed."""

    def fail(
        self, job_id: str, now: float, error: dict[str, Any], owner: str | None = None, token: int | None = None
    ) -> bool:
        """Mark a job failed; with owner, only while owner holds it (with token, under that claim). False if
        nothing changed."""

    def requeue(self, *, inputs: list[str] | None = None, failed: bool = False) -> list[Job]:
        """Queue failed jobs again (all, or those of these inputs) with their attempts counted from zero;
        return them as they were."""

    def get(self, job_id: str) -> Job | None:
        """One job by id."""

    def jobs(self) -> list[Job]:
        """Every job, oldest first."""

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state."""

    def register(self, instance: Instance) -> None:
        """Record this instance (host, pid, GPU) at start."""

    def seen(self, instance_id: str, now: float, status: str) -> bool:
        """The instance is alive and says what it is doing; False if the ledger does not know it (a new file)."""

    def unregister(self, instance_id: str) -> None:
        """The instance stopped cleanly."""

    def status(self, now: float) -> LedgerStatus:
        """Everything `vidrop status` shows."""

    def take_lost(self) -> LedgerUnavailable | None:
        """The fault that lost what the ledger knew (its SQLite file deleted or replaced), noticed by any caller
        since the last call, then forgotten: the daemon's loop must hear of it even if the caller that met it
        (a heartbeat, a gallery write) only logged it, since the ledger works again at the next call."""

    def close(self) -> None:
        """Release the connection."""
