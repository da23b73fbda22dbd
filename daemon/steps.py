"""Between two denoising steps of a running job (and while it waits for memory): stop if asked, keep the
lease, say how far, queue what was dropped meanwhile, feed the watchdog."""

from __future__ import annotations

from typing import Protocol

import structlog

from vidrop.config.settings import Settings
from vidrop.daemon.clock import Clock
from vidrop.daemon.gallery.writer import GalleryWriter
from vidrop.daemon.intake.store import InputStore
from vidrop.daemon.ledger.base import Job, Ledger, LedgerUnavailable
from vidrop.daemon.ledger_pause import LedgerPause
from vidrop.daemon.recorder import JobCancelled, JobInterrupted
from vidrop.daemon.status import ServiceStatus
from vidrop.daemon.stop import StopRequest
from vidrop.daemon.systemd import Notifier

log = structlog.get_logger()

# How long one intake pass between two steps of a running job may admit inputs (hashing, decoding).
INTAKE_BUDGET_SECONDS = 0.5


class LeaseCheck(Protocol):
    def check(self) -> None: ...


class BetweenSteps:
    """The runner's step and waiting callbacks, on the main loop's thread."""

    def __init__(
        self,
        *,
        stop: StopRequest,
        lease: LeaseCheck,
        status: ServiceStatus,
        notifier: Notifier,
        store: InputStore,
        ledger_pause: LedgerPause,
        clock: Clock,
        tick_seconds: float,
        gallery: GalleryWriter | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.stop = stop
        self.lease = lease
        self.status = status
        self.notifier = notifier
        self.store = store
        self.ledger_pause = ledger_pause
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.gallery = gallery
        self._next_intake_pass = 0.0
        self.ledger = ledger  # asked at each step whether `vidrop cancel` named the running job

    def apply(self, settings: Settings) -> None:
        self.tick_seconds = settings.intake.tick_seconds

    def step(self, job: Job, step: int, total: int) -> None:
        """Between two denoising steps: JobInterrupted if the daemon must stop now."""
        self.lease.check()
        if self.stop.must_stop_now():
            raise JobInterrupted(job.id)
        self._check_cancel(job, step, total)
        self.status.step(job, step, total)
        if self.gallery is not None and not self.ledger_pause.is_paused:
            try:
                self.gallery.job_progress(job, step, total)
            except LedgerUnavailable as exc:
                self.ledger_pause.pause(exc)
        if not self.ledger_pause.is_paused:
            self.intake_pass()
        self.notifier.watchdog()

    def _check_cancel(self, job: Job, step: int, total: int) -> None:
        """JobCancelled if `vidrop cancel` named this job. The ledger is asked at each step: one indexed read,
        as the status line's queue count is, against a denoising step of a second or more on a GPU."""
        if self.ledger is None or self.ledger_pause.is_paused:
            return
        try:
            request = self.ledger.cancel_request(job.id)
        except LedgerUnavailable as exc:  # the job goes on; its outcome waits for the ledger anyway
            self.ledger_pause.pause(exc)
            return
        if request is not None:
            log.info("job_cancel_seen", job_id=job.id, step=step, total=total, cancelled_by=request.get("by"))
            raise JobCancelled(job.id, request, step=f"abandoned after step {step} of {total}")

    def waiting(self, text: str) -> None:
        """A job waits (for memory, for the ledger): the loop is alive (it polls), so the watchdog is fed too."""
        self.notifier.status(text)
        if not self.ledger_pause.is_paused:
            self.intake_pass()
        self.notifier.watchdog()

    def intake_pass(self) -> None:
        """Files dropped meanwhile are queued now, not when the job ends. On the loop's own thread and ledger
        connection, so SQLite and PostgreSQL see one writer as between jobs; at most every tick and for
        INTAKE_BUDGET_SECONDS, so the job goes on."""
        now = self.clock.monotonic()
        if now < self._next_intake_pass or self.store.intake is None:
            return
        self._next_intake_pass = now + self.tick_seconds
        job_context = structlog.contextvars.get_contextvars()
        structlog.contextvars.clear_contextvars()  # these events are not the running job's
        try:
            self.store.intake.drain(timeout=0)
            self.store.intake.tick()
            self.store.read_retried_refusals()
            self.store.store_ready(should_stop=lambda: self.stop.is_requested, until=now + INTAKE_BUDGET_SECONDS)
        except LedgerUnavailable as exc:  # what was not admitted waits; the job goes on, its commit waits too
            self.status.ledger_paused(exc)
        except Exception:  # the one broad catch around this pass: intake's trouble must not fail the job
            log.exception("intake_failed_while_running")
        finally:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(**job_context)
