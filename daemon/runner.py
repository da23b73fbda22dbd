"""One claimed job: its input read once → memory fitted → generated → handed to the recorder, or back to the
queue when it is not the job's fault (stopping, the outbox or the inbox unavailable, the lease lost)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import structlog

from vidrop.config.errors import TRY_AGAIN_FIX, GenerationError, InputError
from vidrop.config.settings import MemorySettings, Settings
from vidrop.daemon.clock import Clock
from vidrop.daemon.inputs import InputBytes, MovedInput, find_moved, find_moved_by_ledger, read_input
from vidrop.daemon.intake.admit import job_key
from vidrop.daemon.intake.variants import VARIANT
from vidrop.daemon.lease import LeaseLost
from vidrop.daemon.ledger.base import Job, JobState, Ledger, LedgerUnavailable
from vidrop.daemon.outbox import OutboxUnavailable
from vidrop.daemon.recorder import JobCancelled, JobInterrupted, Recorder, Waiter
from vidrop.pipeline.admission import MemoryAdmission
from vidrop.pipeline.generate import TEXT, JobParams, JobRunning
from vidrop.pipeline.images import load_image
from vidrop.pipeline.memory import GB

log = structlog.get_logger()

ProgressListener = Callable[[Job, int, int], None]


class InboxUnavailable(Exception):
    """The inbox itself is not there (a share unmounted): the job waits; its input was not removed."""


class Runner:
    """Runs one claimed job at a time; every outcome goes to the recorder."""

    def __init__(
        self,
        *,
        recorder: Recorder,
        ledger: Ledger,
        generator: JobRunning,
        inbox: Path,
        clock: Clock,
        settings: Settings,
        on_progress: ProgressListener | None = None,
        wait: Waiter | None = None,
        on_status: Callable[[str], None] | None = None,
        owner: str | None = None,
        on_input_changed: Callable[[str], None] | None = None,
    ) -> None:
        self.recorder = recorder
        self.ledger = ledger
        self.generator = generator
        self.inbox = inbox
        self.clock = clock
        self.on_progress = on_progress
        self.wait = wait or (lambda seconds: False)
        self.on_status = on_status
        self.owner = owner
        self.on_input_changed = on_input_changed  # told the inbox path of an input re-exported under its job
        self.apply(settings)

    def apply(self, settings: Settings) -> None:
        """The live settings the runner reads: limits, memory waits, attempts, the stop timeout."""
        self.max_image_pixels = settings.limits.max_image_pixels
        self.memory: MemorySettings = settings.memory
        self.max_lost_attempts = settings.recovery.max_attempts
        self.stop_timeout_seconds = settings.service.stop_timeout_seconds

    def run(self, job: Job) -> JobState | None:
        """Run one claimed job to done or failed; None when it ended without an outcome of its own: queued again
        (stopping), taken by another instance, its input re-exported since, or moved onto a job of its own.

        InboxUnavailable and OutboxUnavailable propagate once the job is queued again (the caller pauses);
        LedgerUnavailable propagates (the lease runs out; the job is taken again).
        """
        structlog.contextvars.bind_contextvars(job_id=job.id, input=job.input, stage="load")
        started = self.clock.monotonic()
        try:
            return self._run(job, started)
        except JobCancelled as exc:  # `vidrop cancel`, seen between two steps
            return self._cancelled(job, exc, started)
        except JobInterrupted:
            self.recorder.requeued(
                job, event="job_abandoned", reason="stopping", stop_timeout_seconds=self.stop_timeout_seconds
            )
            self._say(f"stopping; {job.input} queued again")
        except LeaseLost:
            log.error("job_abandoned", job_id=job.id, input=job.input, reason="lease lost to another instance")
        except InboxUnavailable:
            self.recorder.requeued(job, event="job_postponed", reason="the inbox is unavailable")
            raise
        except OutboxUnavailable as exc:
            self.recorder.requeued(job, event="job_postponed", reason=exc.reason)
            raise
        finally:
            self.generator.after_job()
            structlog.contextvars.unbind_contextvars("job_id", "input", "stage")
        return None

    def _run(self, job: Job, started: float) -> JobState | None:
        try:
            committed = self.recorder.earlier_results(job)
            if committed is not None:
                return self.recorder.reconciled(job, committed)
            if job.lost_attempts >= self.max_lost_attempts:
                raise self._set_aside(job)
            found = self._input_of(job)
            if found is None:
                return None
            if found.data is None:
                return self.recorder.removed(job, _removed_error(job), duration=self.clock.monotonic() - started)
            self.recorder.started(job)
            params = JobParams.from_dict(job.params)
            # Decoded from the bytes just hashed: the video is made from what the manifest names.
            image = (
                None
                if params.mode == TEXT
                else load_image(found.data, name=job.input, max_pixels=self.max_image_pixels)
            )
            admission = self.wait_for_memory(job, params)
            structlog.contextvars.bind_contextvars(stage="generate")
            log.info(
                "generation_started",
                attempt=job.attempts,
                instance=self.owner,
                width=params.width,
                height=params.height,
                num_frames=params.num_frames,
                steps=params.steps,
                memory_mode=admission.mode.value if admission.mode is not None else None,
                model=job.params.get("model"),
            )
            result = self.generator.generate(
                image,
                params,
                job.seed,
                admission=admission,
                on_step=lambda step, total: self._progress(job, step, total),
            )
            structlog.contextvars.bind_contextvars(stage="encode")
            return self.recorder.done(job, params, result, started=started)
        except (JobInterrupted, JobCancelled, LeaseLost, OutboxUnavailable, InboxUnavailable, LedgerUnavailable):
            raise
        except (InputError, GenerationError) as exc:
            return self.recorder.failed(job, exc, duration=self.clock.monotonic() - started)
        except Exception as exc:  # the one broad catch: around one job, so the queue goes on
            log.exception("job_crashed")
            error = GenerationError(
                "Something went wrong inside vidrop while making this video.",
                detail=f"{type(exc).__name__}: {exc}",
                fix=TRY_AGAIN_FIX,
            )
            return self.recorder.failed(job, error, duration=self.clock.monotonic() - started)

    def _cancelled(self, job: Job, exc: JobCancelled, started: float) -> JobState | None:
        """Record a cancelled running job (its error file); the outbox unavailable: it waits, cancelled, queued."""
        try:
            return self.recorder.cancelled(job, exc.request, duration=self.clock.monotonic() - started, step=exc.step)
        except LeaseLost:
            log.error("job_abandoned", job_id=job.id, input=job.input, reason="lease lost to another instance")
        except OutboxUnavailable as exc_outbox:
            self.recorder.requeued(job, event="job_postponed", reason=exc_outbox.reason)
            raise
        return None

    def _say(self, text: str) -> None:
        if self.on_status is not None:
            self.on_status(text)

    def _progress(self, job: Job, step: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(job, step, total)

    def _input_of(self, job: Job, *, may_follow: bool = True) -> InputBytes | None:
        """The job's input as it is now (a moved one followed); None when the job ended here."""
        try:
            found = read_input(self.inbox, job)
        except OSError as exc:  # there, but not readable (permissions, a damaged share)
            raise InputError(
                "vidrop could not read this file.",
                detail=f"{type(exc).__name__}: {exc}",
                fix="Check that the file can be read on the share, then `vidrop retry` it.",
            ) from None
        if found.data is None:
            if not self.inbox.is_dir():
                raise InboxUnavailable(str(self.inbox))
            moved = None
            if may_follow:
                moved = find_moved(self.inbox, job) or find_moved_by_ledger(
                    self.inbox, job, self.ledger.jobs_by_content(job.content_key)
                )
            if moved is None:
                return found
            if not self._follow(job, moved):
                return None
            return self._input_of(job, may_follow=False)
        if not found.belongs_to(job):
            # Re-exported while the job waited: the job is of bytes no longer there. Intake admits the new
            # ones as their own job; this one ends quietly (no error file: nothing is wrong with the input).
            self.recorder.superseded(job, found.sha256, found.sidecar_sha256)
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
        log.info("job_followed", from_input=job.input, to_input=moved.input, output=output, has_job_there=not followed)
        self.recorder.notify(
            dataclasses.replace(job), JobState.QUEUED, {"moved_to": moved.input}
        )  # the old folder's page
        if followed:
            job.key, job.input, job.sidecar, job.output = key, moved.input, moved.sidecar, output
            structlog.contextvars.bind_contextvars(input=job.input)
        return followed

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
            log.info(
                "memory_wait",
                **admission.to_dict(),
                waiting_for_bytes=admission.waiting_for_bytes,
                held_by=admission.snapshot.held_by(),
                waited_seconds=round(waited, 3),
            )
            self._say(f"job {job.id}: {admission.waiting_text()}")
            if self.wait(min(pause, max(0.0, self.memory.max_wait_seconds - waited))):
                raise JobInterrupted(job.id)
            pause = min(pause * 2, self.memory.wait_poll_max_seconds)

    def _memory_timeout(self, params: JobParams, admission: MemoryAdmission, waited: float) -> GenerationError:
        snapshot = admission.snapshot
        kind = snapshot.kind
        return GenerationError(
            f"There was not enough free {kind} for this video after waiting {waited:.0f} s.",
            detail=(
                f"needs {admission.waiting_for_bytes / GB:.1f} GB free {kind} "
                f"({admission.need_bytes / GB:.1f} GB for the job in its leanest mode plus the "
                f"{admission.reserve_bytes / GB:.1f} GB reserve), {snapshot.free_bytes / GB:.1f} GB free of "
                f"{snapshot.total_bytes / GB:.1f} GB, held by: {snapshot.held_by()}; "
                f"{params.width}x{params.height}, {params.num_frames} frames"
            ),
            fix=(
                f"Close programs holding {kind} ({snapshot.held_by()}), or ask for fewer frames or a smaller size "
                f"(num_frames, width, height in the sidecar), or let vidrop wait longer "
                f"(memory.max_wait_seconds, now {self.memory.max_wait_seconds}) or keep less in reserve "
                f"(memory.reserve_gb, now {self.memory.reserve_gb})."
            ),
        )

    def _set_aside(self, job: Job) -> GenerationError:
        """The error for a job whose process died (or lost its lease) max_lost_attempts times: it runs no more."""
        times = job.lost_attempts
        log.warning("job_set_aside", lost_attempts=times, max_attempts=self.max_lost_attempts)
        return GenerationError(
            f"This input stopped vidrop {times} times, so it is set aside and not tried again by itself.",
            detail=(
                f"{times} attempts ended with the vidrop process dying or losing its lease while it ran this job "
                "(killed for using too much memory, a crash inside a library, or a hang the watchdog ended); "
                f"recovery.max_attempts = {self.max_lost_attempts}"
            ),
            fix=(
                "Ask for a smaller size, fewer frames or fewer steps, or ask the operator to look at the log; "
                f"then run `vidrop retry {job.input}` to try again."
            ),
        )


def _removed_error(job: Job) -> InputError:
    return InputError(
        "This file was removed from the inbox before its turn, so no video was made from it.",
        detail=f"{job.input} was not in the inbox when its job started, nor under another name in its folder "
        "or in a renamed folder",
        fix="Put the file back into the inbox to have it made (it is taken again); "
        "if it was removed on purpose, there is nothing to do.",
    )
