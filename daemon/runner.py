"""One job: load its image → generate → commit outputs → finish, or a clear error file."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, TypeVar

import structlog

from config.settings import MemorySettings
from daemon.clock import Clock
from daemon.inputs import InputBytes, MovedInput, find_moved, find_moved_by_ledger, read_input
from daemon.intake.admit import job_key
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


class InboxUnavailable(Exception):
    """The inbox itself is not there (a share unmounted): the job waits; its input was not removed."""


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
                 on_input_changed: Callable[[str], None] | None = None, max_lost_attempts: int = 3,
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
        self.on_input_changed = on_input_changed  # told the inbox path of an input re-exported under its job
        self.max_lost_attempts = max_lost_attempts
        self.ledger_pause = ledger_pause

    def notify(self, job: Job, state: JobState, details: dict[str, Any] | None = None) -> None:
        """Tell every listener; a listener that fails is logged, never allowed to stop the queue."""
        for listener in self.listeners:
            try:
                listener.job_changed(job, state, details or {})
            except Exception:
                log.exception("job_listener_failed", listener=type(listener).__name__)

    def run(self, job: Job) -> JobState | None:
        """Run one claimed job to done or failed; None when it ended without an outcome of its own (its input
        was re-exported since, or its moved input has a job there already).

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
            if job.lost_attempts >= self.max_lost_attempts:
                raise self._set_aside(job)
            found = self._input_of(job)
            if found is None:
                return None
            if found.data is None:
                return self._removed(job, started)
            names = self._names(job)  # the input may have moved, and its outputs with it
            log.info("job_started", attempt=job.attempts, seed=job.seed, model=job.params.get("model"))
            self.notify(job, JobState.RUNNING)
            params = JobParams.from_dict(job.params)
            # Decoded from the bytes just hashed: the video is made from what the manifest names.
            image = None if params.mode == TEXT else load_image(found.data, name=job.input,
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
            try:
                outputs = self.outbox.commit_success(names=names, result=result, params=params, manifest=manifest,
                                                     before_rename=lambda: self._confirm_lease(job))
            except OutboxUnavailable:
                # An instance that took the job over removes the temporaries of the one it took it from:
                # a stalled holder then finds its files gone, which is a lost lease, not a missing outbox.
                self._confirm_lease(job)
                raise
            encode_seconds = self.clock.monotonic() - encode_started
            now = self.clock.time()
            duration = self.clock.monotonic() - started
            # The line before the ledger: a kill between the two is reconciled without a second line.
            self._record(job, JobState.DONE, lambda: self._append_done_line(job, names, outputs, now, duration),
                         lambda: self.ledger.finish(job.id, now, outputs, owner=self.owner, token=job.claims))
            memory = result.facts["memory"]
            log.info("job_finished", state=JobState.DONE.value, duration_ms=round(duration * 1000),
                     generate_ms=round(result.facts["timings"]["generate_seconds"] * 1000),
                     encode_ms=round(encode_seconds * 1000), frames=result.facts["frames"],
                     peak_memory_bytes=result.facts["peak_memory_bytes"], memory_mode=memory["mode"],
                     estimated_bytes=memory["estimated_bytes"], measured_bytes=memory["measured_bytes"],
                     recovery_steps=len(memory["recovery"]), **memory["after_job"], output=outputs["video"])
            self.notify(job, JobState.DONE, {"outputs": outputs, "manifest": manifest, "duration_seconds": duration})
            return JobState.DONE
        except (JobInterrupted, LeaseLost, OutboxUnavailable, InboxUnavailable, LedgerUnavailable):
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

    def _input_of(self, job: Job, *, may_follow: bool = True) -> InputBytes | None:
        """The job's input as it is now (a moved one followed); None when the job ended here."""
        try:
            found = read_input(self.inbox, job)
        except OSError as exc:  # there, but not readable (permissions, a damaged share)
            raise InputError("vidrop could not read this file.", detail=f"{type(exc).__name__}: {exc}",
                             fix="Check that the file can be read on the share, then `vidrop retry` it.") from None
        if found.data is None:
            if not self.inbox.is_dir():
                raise InboxUnavailable(str(self.inbox))
            moved = None
            if may_follow:
                moved = (find_moved(self.inbox, job)
                         or find_moved_by_ledger(self.inbox, job, self.ledger.jobs_by_content(job.content_key)))
            if moved is None:
                return found
            if not self._follow(job, moved):
                return None
            return self._input_of(job, may_follow=False)
        if not found.belongs_to(job):
            # Re-exported while the job waited: the job is of bytes no longer there. Intake admits the new
            # ones as their own job; this one ends quietly (no error file: nothing is wrong with the input).
            self.ledger.forget(job.id)
            log.info("job_superseded", input_sha256=job.input_sha256, found_sha256=found.sha256,
                     sidecar_sha256=job.sidecar_sha256, found_sidecar_sha256=found.sidecar_sha256,
                     reason="the input changed while its job waited; its new bytes are a job of their own")
            self.notify(job, JobState.QUEUED, {"superseded": True})  # pages: the job is gone
            if self.on_input_changed is not None:
                self.on_input_changed(job.input)
            return None
        return found

    def _follow(self, job: Job, moved: MovedInput) -> bool:
        """Point the job at its input's new path (it keeps its place in the queue); False when a job for the
        new path exists already and has started or ended (then that one is the input's job, this one ends)."""
        key = job_key(moved.input, job.input_sha256, job.sidecar_sha256, job.params.get(VARIANT, ""))
        output = moved.output_for(job)
        followed = self.ledger.move_job(job.id, key=key, input=moved.input, sidecar=moved.sidecar, output=output)
        log.info("job_followed", from_input=job.input, to_input=moved.input, output=output,
                 has_job_there=not followed)
        self.notify(dataclasses.replace(job), JobState.QUEUED, {"moved_to": moved.input})  # the old folder's page
        if followed:
            job.key, job.input, job.sidecar, job.output = key, moved.input, moved.sidecar, output
            structlog.contextvars.bind_contextvars(input=job.input)
        return followed

    def _removed(self, job: Job, started: float) -> JobState:
        """The input vanished before its turn: an error file where its video would have been, and the job
        forgotten, so that the same file put back is taken again."""
        error = InputError(
            "This file was removed from the inbox before its turn, so no video was made from it.",
            detail=f"{job.input} was not in the inbox when its job started, nor under another name in its folder "
                   "or in a renamed folder",
            fix="Put the file back into the inbox to have it made (it is taken again); "
                "if it was removed on purpose, there is nothing to do.",
        )
        self.record_failure(job, error, duration=self.clock.monotonic() - started)
        self.ledger.forget(job.id)
        return JobState.FAILED

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
                             owner=self.owner if is_running else None, token=job.claims)

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
        """The same image and request were done before under another name: copy, don't generate again.

        Only while the earlier results are still that job's (a re-export under the earlier name replaces
        them); False when they are not, and the job is made the ordinary way.
        """
        params = JobParams.from_dict(job.params)
        manifest = _intact_manifest(earlier)
        if manifest is None:
            log.info("duplicate_not_reused", job_id=job.id, input=job.input, earlier_job_id=earlier.id,
                     earlier_input=earlier.input, reason="the earlier results are gone or belong to another job now")
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

    def _set_aside(self, job: Job) -> GenerationError:
        """The error for a job whose process died (or lost its lease) max_lost_attempts times: it runs no more."""
        times = job.lost_attempts
        log.warning("job_set_aside", lost_attempts=times, max_attempts=self.max_lost_attempts)
        return GenerationError(
            f"This input stopped vidrop {times} times, so it is set aside and not tried again by itself.",
            detail=(f"{times} attempts ended with the vidrop process dying or losing its lease while it ran this job "
                    "(killed for using too much memory, a crash inside a library, or a hang the watchdog ended); "
                    f"recovery.max_attempts = {self.max_lost_attempts}"),
            fix=("Ask for a smaller size, fewer frames or fewer steps, or ask the operator to look at the log; "
                 f"then run `vidrop retry {job.input}` to try again."),
        )

    def _names(self, job: Job) -> OutputNames:
        return self.outbox.names_for_output(job.output) if job.output else self.outbox.names_for(job.input)
    def _reconcile(self, job: Job, names: OutputNames, outputs: dict[str, str]) -> JobState:
        """A killed attempt had already renamed every output into place: record it, do not run it again."""
        now = self.clock.time()

        def write_line() -> None:
            if not self.outbox.has_job_line(names, job.id, JobState.DONE.value):
                self._append_done_line(job, names, outputs, now, 0.0)

        self._record(job, JobState.DONE, write_line,
                     lambda: self.ledger.finish(job.id, now, outputs, owner=self.owner, token=job.claims))
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
                if (current is None or current.state is not JobState.RUNNING or current.lease_owner != self.owner
                        or current.claims != job.claims):  # taken over, even by a claim of this very instance
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


def _intact_manifest(earlier: Job) -> dict[str, Any] | None:
    """The earlier job's manifest, if the manifest on disk and the video it lists are still that job's."""
    manifest_path, video = Path(earlier.outputs.get("manifest", "")), Path(earlier.outputs.get("video", ""))
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        # The manifest is renamed into place after its video: a video newer than it was written by another job.
        is_video_older = video.stat().st_mtime_ns <= manifest_path.stat().st_mtime_ns
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    recorded = manifest.get("input") or {}
    belongs = (manifest.get("job_id") == earlier.id and manifest.get("state") == JobState.DONE.value
               and recorded.get("sha256") == earlier.input_sha256
               and recorded.get("sidecar_sha256") == earlier.sidecar_sha256
               and (manifest.get("outputs") or {}).get("video") == video.name and is_video_older)
    return manifest if belongs else None
