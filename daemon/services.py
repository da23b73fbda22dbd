"""The services one running daemon uses, and what they do together: start intake, hand fresh settings to
each of them, pause and resume around the outbox and the ledger, claim the next job, close."""

from __future__ import annotations

import queue
from dataclasses import dataclass, field

import structlog

from vidrop.config.settings import Settings
from vidrop.daemon.clock import Clock
from vidrop.daemon.gallery.writer import GalleryWriter
from vidrop.daemon.hooks import HookDispatcher
from vidrop.daemon.inputs import InputDisposal
from vidrop.daemon.instance import Instance
from vidrop.daemon.intake.intake import Intake
from vidrop.daemon.intake.store import InputStore
from vidrop.daemon.intake.taken import TakenInputs
from vidrop.daemon.lease import LeaseKeeper, LeaseLost
from vidrop.daemon.ledger.base import Job, Ledger, LedgerUnavailable
from vidrop.daemon.ledger_pause import LedgerPause
from vidrop.daemon.outbox import Outbox, OutboxUnavailable
from vidrop.daemon.outbox_pause import OutboxPause
from vidrop.daemon.queue_control import QueueWatch, describe
from vidrop.daemon.recorder import JobInterrupted, Recorder
from vidrop.daemon.runner import Runner
from vidrop.daemon.status import ServiceStatus
from vidrop.daemon.steps import BetweenSteps
from vidrop.daemon.systemd import Notifier
from vidrop.pipeline.generate import Generator

log = structlog.get_logger()


@dataclass
class Services:
    """Everything one running daemon uses; built by `Wiring.build`, run by `Daemon`."""

    settings: Settings
    clock: Clock
    notifier: Notifier
    ledger: Ledger
    generator: Generator
    instance: Instance
    outbox: Outbox
    outbox_pause: OutboxPause
    ledger_pause: LedgerPause
    keeper: LeaseKeeper
    disposal: InputDisposal
    recorder: Recorder
    status: ServiceStatus
    store: InputStore
    steps: BetweenSteps
    runner: Runner
    gallery: GalleryWriter | None = None
    hooks: HookDispatcher | None = None
    events: queue.Queue = field(default_factory=queue.Queue)
    intake: Intake | None = None
    taken: TakenInputs | None = None
    queue: QueueWatch | None = None  # the fleet's queue control, read at every turn

    def start_intake(self, *, watch: bool, load_taken: bool = False) -> None:
        """Intake (watcher, scans, pending inputs) with the current settings, and the store fed by it; with
        load_taken, what was taken is read from the ledger again first (at start, after a ledger outage)."""
        if self.intake is not None:
            self.intake.stop()
        if load_taken or self.taken is None:
            self.taken = TakenInputs(self.settings.inbox, store=self.ledger)
            log.info("taken_inputs_loaded", inputs=self.taken.load())
        self.intake = Intake(self.settings.inbox, self.settings.intake, self.events, self.clock, taken=self.taken)
        self.status.intake = self.intake
        self.store.attach(self.intake, self.taken)
        self.intake.start(watch=watch)

    def apply(self, settings: Settings) -> None:
        """Fresh live settings, handed to each service that reads them; a changed [intake] restarts intake."""
        intake_changed = settings.intake != self.settings.intake
        self.settings = settings
        self.generator.set_limits(settings.limits)
        self.runner.apply(settings)
        self.disposal.apply(settings)
        self.steps.apply(settings)
        self.store.apply(settings)
        if intake_changed and self.intake is not None:  # a new intake with the new rules; its first scan
            self.start_intake(watch=self.intake.is_watching)  # finds what waited

    def probe_ledger(self) -> None:
        """A small write (a full disk still lets the ledger be read); a new ledger file learns of this instance."""
        if not self.ledger.seen(self.instance.id, self.clock.time(), self.status.text):
            self.ledger.register(self.instance)

    def outbox_unavailable(self, exc: OutboxUnavailable) -> float:
        """Pause the jobs (intake goes on), say why; how long until the outbox is tried again."""
        wait = self.outbox_pause.pause(exc)
        log.warning(
            "outbox_unavailable",
            reason=exc.reason,
            errno=exc.errno_name,
            detail=exc.detail,
            fix=exc.fix,
            retry_in_seconds=round(wait, 1),
        )
        self.status.idle()
        return self.outbox_pause.wait

    def next_job(self) -> Job | None:
        """The job this instance runs next (one for a resident model first); none while the inbox (where the
        queued jobs' images are too) or the outbox is unavailable."""
        if not self.intake.is_available:
            self.notifier.status(f"inbox unavailable ({self.intake.unavailable_reason}): intake paused")
            return None
        if self.outbox_pause.is_paused and not self.outbox_is_back():
            return None
        return self.ledger.claim_next(
            self.instance.id,
            self.clock.time(),
            self.settings.recovery.lease_seconds,
            prefer_models=self.generator.resident_models(),
            patience_seconds=self.settings.pipeline.switch_after_seconds,
            prefer_loras=self.generator.resident_loras(),
        )

    def queue_changed(self) -> None:
        """`vidrop pause`, `drain` or `resume` reached this instance: STATUS= and _STATUS.txt say so."""
        if self.gallery is not None and self.queue is not None:  # without counts: they change between writes
            self.gallery.show_held(describe(self.queue.control))
        self.status.idle()

    def record_cancellations(self, limit: int = 20) -> int:
        """Cancelled jobs no instance runs (queued, or their holder gone): claim each under a lease and record it
        (its error file), whichever instance is first; none while the inbox or the outbox is unavailable."""
        if not self.intake.is_available or self.outbox_pause.is_paused:
            return 0
        recorded = 0
        while recorded < limit:
            job = self.ledger.claim_cancelled(self.instance.id, self.clock.time(), self.settings.recovery.lease_seconds)
            if job is None:
                break
            self.keeper.hold(job.id, job.claims)
            try:
                self.recorder.cancelled(job, job.cancel or {})
            except LeaseLost:
                log.error("job_abandoned", job_id=job.id, input=job.input, reason="lease lost to another instance")
            except OutboxUnavailable as exc:
                self.recorder.requeued(job, event="job_postponed", reason=exc.reason)
                self.outbox_unavailable(exc)
                break
            except JobInterrupted:  # stopping while the ledger was unavailable: the next start records it
                self.recorder.requeued(job, event="job_abandoned", reason="stopping")
                break
            finally:
                self.keeper.drop()
            recorded += 1
        if recorded:
            self.status.idle()
        return recorded

    def try_ledger_again(self) -> None:
        """While the ledger is unavailable, when its pause is due: probe it; still unavailable, say so."""
        if not self.ledger_pause.try_again():
            self.status.idle()
            self.status.show_ledger_notice()

    def after_ledger_outage(self) -> None:
        """The ledger may have lost what it knew (a new or restored SQLite file, a failover): read the taken
        inputs again and scan the whole inbox. Known keys cost a hash; results in the outbox are not made again."""
        self.status.show_ledger_notice()
        self.start_intake(watch=self.intake.is_watching, load_taken=True)
        self.status.idle()

    def outbox_is_back(self) -> bool:
        """Whether the paused outbox takes writes again (tried when due)."""
        if not self.outbox_pause.is_due():
            return False
        try:
            self.outbox_pause.try_again()
        except OutboxUnavailable as exc:
            self.outbox_unavailable(exc)
            return False
        log.info("outbox_available", paused_seconds=round(self.outbox_pause.last_pause_seconds, 1))
        self.status.idle()
        return True

    def unload_if_idle(self, *, idle_seconds: float) -> None:
        """After memory.idle_unload_seconds without a job, give the device's memory back to others."""
        limit = self.settings.memory.idle_unload_seconds
        if limit <= 0 or self.status.is_model_unloaded or idle_seconds < limit:
            return
        self.status.is_model_unloaded = True
        if self.generator.unload():
            log.info("model_idle_unloaded", idle_seconds=round(idle_seconds, 3))
            self.status.idle()

    def close(self) -> dict[str, int] | None:
        """Stop the watcher, the hooks and the lease keeper; flush the gallery; leave the ledger. The counts
        the ledger had last (None if it could not be read)."""
        if self.intake is not None:
            self.intake.stop()
        if self.hooks is not None:
            self.hooks.close()
        self.keeper.stop()
        counts = None
        try:
            if self.gallery is not None:
                self.gallery.flush(force=True)  # the last state, without the self-refresh once nothing is pending
            self.ledger.unregister(self.instance.id)
            counts = self.ledger.counts()
        except LedgerUnavailable as exc:  # a job still running in it is taken over once its lease runs out
            log.warning("ledger_unavailable_at_stop", reason=exc.reason, detail=exc.detail)
        return counts
