"""One job: load its image → generate → commit outputs → finish, or a clear error file."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, TypeVar

import structlog

from config.settings import MemorySettings
from daemon.clock import Clock
from daemon.intake.variants import VARIANT
from daemon.ledger.base import Job, JobState, Ledger, LedgerUnavailable
from daemon.ledger_pause import LedgerPause
from daemon.lease import LeaseLost
from daemon.outbox import OutboxUnavailable, Outbox, OutputNames, iso_time
from pipeline.errors import GenerationError, InputError, VidropError
from pipeline.admission import MemoryAdmission
from pipeline.generate import TEXT, Generator, JobParams
from pipeline.memory import GB
from pipeline.images import load_image

log = structlog.get_logger()

ProgressListener = Callable[[Job, int, int], None]
# Pauses for `seconds` unless the daemon is stopping; True when it is (the waiting job goes back to the queue).
Waiter = Callable[[float], bool]
T = TypeVar("T")


class JobListener(Protocol):
    """Told about every change of a job's state (galleries, hooks); must not raise."""

    def job_changed(self, job: Job, state: JobState, details: dict[str, Any]) -> None: ...


class JobInterrupted(Exception):
    """Raised from the step callback when the daemon must stop now; the job goes back to the queue."""


class LeaseGuard(Protocol):
    """Confirms, right before outputs are written, that this instance still holds the job."""

    def confirm(self) -> None: ...

    def seconds_left(self) -> float: ...


class Runner:
    """Runs claimed jobs and records their outcome in the outbox and the ledger."""

    def __init__(self, *, ledger: Ledger, outbox: Outbox, generator: Generator, inbox: Path, clock: Clock,
                 max_image_pixels: int, on_progress: ProgressListener | None = None,
                 listeners: Sequence[JobListener] = (), memory: MemorySettings | None = None,
                 wait: Waiter | None = None, on_status: Callable[[str], None] | None = None,
                 owner: str | None = None, lease: LeaseGuard | None = None, lease_seconds: float = 30.0,
                 ledger_pause: LedgerPause | None = None) -> None:
        self.ledger = ledger
        self.outbox = outbox
        self.generator = generator
        self.inbox = inbox
        self.clock = clock
        self.max_image_pixels = max_image_pixels
        self.on_progress = on_progress
        self.listeners = list(listeners)
        self.memory = memory or MemorySettings()
        self.wait = wait or threading.Event().wait
        self.on_status = on_status
        self.owner = owner
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.ledger_pause = ledger_pause

    def notify(self, job: Job, state: JobState, details: dict[str, Any] | None = None) -> None:
        """Tell every listener; a listener that fails is logged, never allowed to stop the queue."""
        for listener in self.listeners:
            try:
                listener.job_changed(job, state, details or {})
            except Exception:
                log.exception("job_listener_failed", listener=type(listener).__name__)

    def run(self, job: Job) -> JobState:
        """Run one claimed job to done or failed.

        JobInterrupted (the caller requeues), LeaseLost (another instance has it) and OutboxUnavailable
        (the caller requeues and pauses) propagate: none of them is the job's fault. While the ledger is
        unavailable, the job's last steps (confirming the lease, recording the outcome) wait for it.
        """
        structlog.contextvars.bind_contextvars(job_id=job.id, input=job.input, stage="load")
        started = self.clock.monotonic()
        try:
            names = self._names(job)
            if job.attempts > 1:
                # An earlier attempt died (or lost its lease): its half-written files are no one's now.
                self.outbox.remove_job_temporaries(names)
            # Results already in the outbox for this very request (an attempt killed after its renames, or a
            # ledger lost or restored from an old backup) are recorded, not made again.
            committed = self.outbox.find_committed(names, job.id,
                                                   request=self._request(job, JobParams.from_dict(job.params)))
            if committed is not None:
                return self._reconcile(job, names, committed)
            log.info("job_started", attempt=job.attempts, seed=job.seed, model=job.params.get("model"))
            self.notify(job, JobState.RUNNING)
            params = JobParams.from_dict(job.params)
            image = None if params.mode == TEXT else load_image(self.inbox / job.input,
                                                                 max_pixels=self.max_image_pixels)
            admission = self.wait_for_memory(job, params)
            structlog.contextvars.bind_contextvars(stage="generate")
            # Counted by the fleet tests: each job must be generated exactly once unless its holder died.
            log.info("pipeline_invoked", attempt=job.attempts, instance=self.owner)
            result = self.generator.generate(image, params, job.seed,
                                             on_step=lambda step, total: self._progress(job, step, total),
                                             admission=admission)
            structlog.contextvars.bind_contextvars(stage="encode")
            encode_started = self.clock.monotonic()
            manifest = self._manifest(job, params, result.facts)
            self._confirm_lease(job)
            outputs = self.outbox.commit_success(names=names, result=result, params=params, manifest=manifest)
            encode_seconds = self.clock.monotonic() - encode_started
            now = self.clock.time()
            duration = self.clock.monotonic() - started
            # The line before the ledger: a kill between the two is reconciled without a second line.
            self._record(job, JobState.DONE, lambda: self._append_done_line(job, names, outputs, now, duration),
                         lambda: self.ledger.finish(job.id, now, outputs, owner=self.owner))
            memory = result.facts["memory"]
            log.info("job_finished", state=JobState.DONE.value, duration_ms=round(duration * 1000),
                     generate_ms=round(result.facts["timings"]["generate_seconds"] * 1000),
                     encode_ms=round(encode_seconds * 1000), frames=result.facts["frames"],
                     peak_memory_bytes=result.facts["peak_memory_bytes"], memory_mode=memory["mode"],
                     estimated_bytes=memory["estimated_bytes"], measured_bytes=memory["measured_bytes"],
                     recovery_steps=len(memory["recovery"]), **memory["after_job"], output=outputs["video"])
            self.notify(job, JobState.DONE, {"outputs": outputs, "manifest": manifest, "duration_seconds": duration})
            return JobState.DONE
        except (JobInterrupted, LeaseLost, OutboxUnavailable, LedgerUnavailable):
            raise
        except (InputError, GenerationError) as exc:
            self.record_failure(job, exc, duration=self.clock.monotonic() - started)
            return JobState.FAILED
        except Exception as exc:  # the one broad catch: around one job, so the queue goes on
            log.exception("job_crashed")
            error = GenerationError("Something went wrong inside vidrop while making this video.",
                                    detail=f"{type(exc).__name__}: {exc}",
                                    fix="Try again; if it keeps failing, send this file to the operator.")
            self.record_failure(job, error, duration=self.clock.monotonic() - started)
            return JobState.FAILED
        finally:
            self.generator.after_job()
            structlog.contextvars.unbind_contextvars("job_id", "input", "stage")

    def wait_for_memory(self, job: Job, params: JobParams) -> MemoryAdmission:
        """The admission for this job; while nothing fits, wait with back-off, saying for what and why.

        Past memory.max_wait_seconds the job fails with what it needed and what the user can change.
        """
        started = self.clock.monotonic()
        pause = self.memory.wait_poll_seconds
        while True:
            admission = self.generator.admit(params)
            waited = self.clock.monotonic() - started
            if admission.fits:
                log.info("memory_admitted", **admission.to_dict(), waited_seconds=round(waited, 3))
                return admission
            if waited >= self.memory.max_wait_seconds:
                raise self._memory_timeout(params, admission, waited)
            log.info("memory_wait", **admission.to_dict(), waiting_for_bytes=admission.waiting_for_bytes,
                     held_by=admission.snapshot.held_by(), waited_seconds=round(waited, 3))
            if self.on_status is not None:
                self.on_status(f"job {job.id}: {admission.waiting_text()}")
            if self.wait(min(pause, max(0.0, self.memory.max_wait_seconds - waited))):
                raise JobInterrupted(job.id)
            pause = min(pause * 2, self.memory.wait_poll_max_seconds)

    def _memory_timeout(self, params: JobParams, admission: MemoryAdmission, waited: float) -> GenerationError:
        snapshot = admission.snapshot
        kind = snapshot.kind
        return GenerationError(
            f"There was not enough free {kind} for this video after waiting {waited:.0f} s.",
            detail=(f"needs {admission.waiting_for_bytes / GB:.1f} GB free {kind} "
                    f"({admission.need_bytes / GB:.1f} GB for the job in its leanest mode plus the "
                    f"{admission.reserve_bytes / GB:.1f} GB reserve), {snapshot.free_bytes / GB:.1f} GB free of "
                    f"{snapshot.total_bytes / GB:.1f} GB, held by: {snapshot.held_by()}; "
                    f"{params.width}x{params.height}, {params.num_frames} frames"),
            fix=(f"Close programs holding {kind} ({snapshot.held_by()}), or ask for fewer frames or a smaller size "
                 f"(num_frames, width, height in the sidecar), or let vidrop wait longer "
                 f"(memory.max_wait_seconds, now {self.memory.max_wait_seconds}) or keep less in reserve "
                 f"(memory.reserve_gb, now {self.memory.reserve_gb})."),
        )

    def record_failure(self, job: Job, error: VidropError, *, duration: float = 0.0) -> Path:
        """Write the error file, append to jobs.jsonl, mark the job failed, log the summary event."""
        now = self.clock.time()
        names = self._names(job)
        kind = "input" if isinstance(error, InputError) else "generation"
        document = {
            "state": JobState.FAILED.value,
            "input": job.input,
            "sidecar": job.sidecar,
            "job_id": job.id,
            "error": error.reason,
            "what_to_do": error.fix,
            "detail": error.detail,
            "kind": kind,
            "failed_at": iso_time(now),
        }
        is_running = job.state is JobState.RUNNING
        if is_running:
            self._confirm_lease(job)
        path = self.outbox.commit_failure(names=names, error_document=document)

        def write_line() -> None:
            self.outbox.append_job_line(names, {
                "job_id": job.id, "input": job.input, "state": JobState.FAILED.value, "error": error.reason,
                "error_file": path.name, "finished_at": iso_time(now), "duration_seconds": round(duration, 3),
            })

        def write_ledger() -> None:
            self.ledger.fail(job.id, now, {key: document[key] for key in ("error", "what_to_do", "detail", "kind")},
                             owner=self.owner if is_running else None)

        if is_running:
            self._record(job, JobState.FAILED, write_line, write_ledger)
        else:  # a refusal at intake: LedgerUnavailable goes to the caller, which looks at the input again later
            write_line()
            write_ledger()
        log.warning("job_finished", job_id=job.id, input=job.input, state=JobState.FAILED.value, error=error.reason,
                    detail=error.detail, kind=kind, output=str(path), duration_ms=round(duration * 1000))
        self.notify(job, JobState.FAILED, {"error_file": str(path), "error": document})
        return path

    def reuse_results(self, job: Job, earlier: Job) -> bool:
        """The same image and request were done before under another name: copy, don't generate again."""
        params = JobParams.from_dict(job.params)
        manifest = json.loads(Path(earlier.outputs.get("manifest", "/nonexistent")).read_text()) \
            if Path(earlier.outputs.get("manifest", "/nonexistent")).is_file() else None
        if manifest is None:
            return False
        manifest.update({"job_id": job.id, "duplicate_of": {"job_id": earlier.id, "input": earlier.input},
                         "input": {"path": job.input, "sha256": job.input_sha256, "sidecar": job.sidecar,
                                   "sidecar_sha256": job.sidecar_sha256}})
        names = self._names(job)
        # Stored as running under this instance's lease first: of several instances that found the
        # same duplicate, only the one whose row went in writes the copies.
        owner = self.owner or "local"
        now = self.clock.time()
        job.state, job.lease_owner, job.lease_expires_at = JobState.RUNNING, owner, now + self.lease_seconds
        if not self.ledger.enqueue(job):
            return True
        try:
            outputs = self.outbox.copy_results(source=earlier.outputs, names=names, fmt=params.format,
                                               manifest=manifest)
        except OutboxUnavailable:
            self.ledger.release(job.id, owner)
            raise
        if outputs is None:  # the earlier files are gone: make it the ordinary way
            self.ledger.release(job.id, owner)
            log.info("job_queued", job_id=job.id, input=job.input, sidecar=job.sidecar, seed=job.seed)
            self.notify(job, JobState.QUEUED)
            return True
        now = self.clock.time()
        job.state, job.finished_at, job.outputs, job.seed = JobState.DONE, now, outputs, earlier.seed
        self.ledger.finish(job.id, now, outputs, owner=owner)
        self.outbox.append_job_line(names, {
            "job_id": job.id, "input": job.input, "state": JobState.DONE.value, "seed": job.seed,
            "duplicate_of": earlier.id, "outputs": {name: Path(path).name for name, path in outputs.items()},
            "finished_at": iso_time(now), "duration_seconds": 0.0,
        })
        log.info("job_finished", job_id=job.id, input=job.input, state=JobState.DONE.value, duplicate_of=earlier.id,
                 output=outputs["video"], duration_ms=0)
        self.notify(job, JobState.DONE, {"outputs": outputs, "manifest": manifest, "duration_seconds": 0.0})
        return True

    def _names(self, job: Job) -> OutputNames:
        return self.outbox.names_for_output(job.output) if job.output else self.outbox.names_for(job.input)
    def _reconcile(self, job: Job, names: OutputNames, outputs: dict[str, str]) -> JobState:
        """A killed attempt had already renamed every output into place: record it, do not run it again."""
        now = self.clock.time()

        def write_line() -> None:
            if not self.outbox.has_job_line(names, job.id, JobState.DONE.value):
                self._append_done_line(job, names, outputs, now, 0.0)

        self._record(job, JobState.DONE, write_line, lambda: self.ledger.finish(job.id, now, outputs, owner=self.owner))
        log.info("job_reconciled", state=JobState.DONE.value, output=outputs["video"])
        self.notify(job, JobState.DONE, {"outputs": outputs, "reconciled": True})
        return JobState.DONE

    def _request(self, job: Job, params: JobParams) -> dict[str, Any]:
        """What a manifest of this job says it was made from: the input block and the effective parameters."""
        parameters = {**params.to_dict(), "seed": job.seed}
        parameters.pop("adjustments")
        return {"input": {"path": job.input, "sha256": job.input_sha256, "sidecar": job.sidecar,
                          "sidecar_sha256": job.sidecar_sha256},
                "parameters": parameters, "seed_was_random": params.seed is None}

    def _confirm_lease(self, job: Job) -> None:
        """Right before writing outputs: this instance must still hold the job.

        With the ledger unavailable, a lease that has not run out by this instance's clock still holds (no
        other instance may take the job before then), so the outputs are written and only their recording
        waits; once it has run out, the ledger must say first whose the job is.
        """
        if self.lease is None:
            return
        try:
            self.lease.confirm()
        except LedgerUnavailable as exc:
            left = self.lease.seconds_left()
            if self.ledger_pause is None or left <= 0:
                self._with_ledger(job, self.lease.confirm)
                return
            log.warning("lease_unconfirmed", reason=exc.reason, lease_left_seconds=round(left, 1))
            self.ledger_pause.pause(exc)
            return
        if self.ledger_pause is not None:
            self.ledger_pause.resume()

    def _record(self, job: Job, state: JobState, write_line: Callable[[], None],
                write_ledger: Callable[[], object]) -> None:
        """A running job's outcome: its jobs.jsonl line, then the ledger, only while this instance holds the job.

        While the ledger is unavailable both wait (the outputs are in the outbox already); once it is back it
        says whether the job is still this instance's: if another took it over meanwhile, nothing is recorded
        twice (LeaseLost).
        """
        progress = {"line": False, "sent": False}

        def record() -> None:
            if self.owner is not None:
                current = self.ledger.get(job.id)
                if progress["sent"] and current is not None and current.state is state:
                    return  # the last try went through; only its answer was lost with the connection
                if current is None or current.state is not JobState.RUNNING or current.lease_owner != self.owner:
                    log.error("job_lease_lost", job_id=job.id, instance=self.owner,
                              holder=None if current is None else current.lease_owner,
                              state=None if current is None else current.state.value)
                    raise LeaseLost(job.id)
            if not progress["line"]:
                write_line()
                progress["line"] = True
            progress["sent"] = True
            write_ledger()

        self._with_ledger(job, record)

    def _with_ledger(self, job: Job, step: Callable[[], T]) -> T:
        """One of a running job's ledger steps; while the ledger is unavailable, wait with back-off and try again
        (the frames, or the outputs already written, stay; the watchdog is fed). Stopping meanwhile: JobInterrupted."""
        while True:
            try:
                result = step()
            except LedgerUnavailable as exc:
                if self.ledger_pause is None:
                    raise
                wait = self.ledger_pause.pause(exc)
                if self.on_status is not None:
                    self.on_status(f"paused: {self.ledger_pause.describe()}; {job.input} waits to be recorded")
                if self.wait(wait):
                    raise JobInterrupted(job.id) from exc
                continue
            if self.ledger_pause is not None:
                self.ledger_pause.resume()
            return result

    def _append_done_line(self, job: Job, names: OutputNames, outputs: dict[str, str], now: float, duration: float) -> None:
        self.outbox.append_job_line(names, {
            "job_id": job.id, "input": job.input, "state": JobState.DONE.value, "seed": job.seed,
            "outputs": {name: Path(path).name for name, path in outputs.items()},
            "finished_at": iso_time(now), "duration_seconds": round(duration, 3),
        })

    def _progress(self, job: Job, step: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(job, step, total)

    def _manifest(self, job: Job, params: JobParams, facts: dict[str, Any]) -> dict[str, Any]:
        return {
            "job_id": job.id,
            "state": JobState.DONE.value,
            **self._request(job, params),  # input, parameters, seed_was_random
            "variant": job.params.get(VARIANT),
            "adjustments": params.to_dict()["adjustments"],
            "model": facts["model"],
            "model_name": facts.get("model_name"),
            # The model before this job's and what loading this one took (None: it was already the one).
            "model_switch": facts.get("model_switch"),
            "family": facts["family"],
            "device": facts["device"],
            "dtype": facts["dtype"],
            "timings": {
                "queued_at": iso_time(job.created_at),
                "started_at": iso_time(job.started_at or time.time()),
                "queued_seconds": round(max(0.0, (job.started_at or job.created_at) - job.created_at), 3),
                **facts["timings"],
            },
            "peak_memory_bytes": facts["peak_memory_bytes"],
            "memory": facts["memory"],
            "attempts": job.attempts,
        }
