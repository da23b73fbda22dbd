"""Daemon: startup → loop → shutdown. Signal handlers only set flags."""

from __future__ import annotations

import queue
import signal
from typing import Callable, Sequence

import structlog

from config.settings import Settings
from daemon.clock import Clock, SystemClock
from daemon.hooks import HookDispatcher
from daemon.inputs import InputDisposal
from daemon.instance import instance_token, this_instance
from daemon.intake.admit import Admitter, NotReadyYet
from daemon.intake.intake import Intake
from daemon.intake.watch import STOP
from daemon.lease import LeaseKeeper, LeaseLost
from daemon.ledger import open_ledger
from daemon.ledger.base import Job, JobState
from daemon.outbox import Outbox, OutboxUnavailable
from daemon.outbox_pause import OutboxPause
from daemon.runner import JobInterrupted, JobListener, Runner
from daemon.systemd import Notifier, NullNotifier
from pipeline.generate import Generator

log = structlog.get_logger()

GeneratorFactory = Callable[[Settings], Generator]
NOT_READY_RETRY_SECONDS = 2.0


class Daemon:
    """The hot-folder daemon. `run()` for the service, `run(once=True)` to drain the inbox and exit."""

    def __init__(self, settings: Settings, *, generator_factory: GeneratorFactory, clock: Clock | None = None,
                 notifier: Notifier | None = None, listeners: Sequence[JobListener] = ()) -> None:
        self.settings = settings
        self.generator_factory = generator_factory
        self.clock = clock or SystemClock()
        self.notifier = notifier or NullNotifier()
        self.listeners = list(listeners)
        self.events: queue.Queue = queue.Queue()
        self.should_stop = False
        self.must_stop_now = False
        self.failed_jobs = 0
        self.finished_jobs = 0
        self.intake: Intake | None = None
        self._hooks: HookDispatcher | None = None
        self._keeper: LeaseKeeper | None = None
        self.status_text = "starting"

    # -- lifecycle -----------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> int:
        """Run until stopped (or, with once, until nothing is pending). 0, or 1 if a job failed in once mode."""
        self.startup(watch=not once)
        try:
            while not self.should_stop:
                self.run_once(timeout=self.settings.intake.tick_seconds)
                if once and self.is_idle():
                    break
        finally:
            self.shutdown()
        return 1 if once and self.failed_jobs else 0

    def startup(self, *, watch: bool) -> None:
        """Folders, ledger, outbox reconcile, model, watcher, first scan; then READY."""
        settings = self.settings
        for folder in (settings.inbox, settings.outbox, settings.state_dir):
            folder.mkdir(parents=True, exist_ok=True)
        recovery = settings.recovery
        self.ledger = open_ledger(settings.ledger_url, settings.state_dir)
        log.info("daemon_starting", inbox=str(settings.inbox), outbox=str(settings.outbox),
                 ledger=type(self.ledger).__name__, schema_version=self.ledger.schema_version())
        self.notifier.status("loading model")
        self.generator = self.generator_factory(settings)
        described = self.generator.describe()
        log.info("model_loaded", **described)
        self.instance = this_instance(str(described.get("device", "?")), self.clock.time())
        self.ledger.register(self.instance)
        self.outbox = Outbox(settings.outbox, owner=instance_token(self.instance.id))
        self.pause = OutboxPause(self.outbox, clock=self.clock, first_wait=recovery.outbox_retry_seconds,
                                 longest_wait=recovery.outbox_retry_max_seconds)
        # Temporary files of instances that stopped heartbeating are no one's; a live one's are left alone.
        live = {instance_token(i.id) for i in self.ledger.status(self.clock.time()).instances
                if i.seen_at >= self.clock.time() - recovery.lease_seconds}
        removed = self.outbox.remove_stale_temporaries(live_owners=live)
        self._keeper = LeaseKeeper(self.ledger, instance_id=self.instance.id, clock=self.clock,
                                   lease_seconds=recovery.lease_seconds, describe=lambda: self.status_text)
        self._keeper.start()
        log.info("instance_registered", instance=self.instance.id, host=self.instance.host, pid=self.instance.pid,
                 device=self.instance.device, stale_temporaries_removed=len(removed))
        self.intake = Intake(settings.inbox, settings.intake, self.events, self.clock)
        self.admitter = Admitter(settings, self.generator, self.intake.is_junk, is_known=self.ledger.has_key)
        listeners = [*self.listeners, InputDisposal(settings)]
        if settings.hooks.is_configured:
            self._hooks = HookDispatcher(settings.hooks, dead_letter=settings.dead_letter_path)
            self._hooks.start()
            listeners.append(self._hooks)
        self.runner = Runner(ledger=self.ledger, outbox=self.outbox, generator=self.generator, inbox=settings.inbox,
                             clock=self.clock, max_image_pixels=settings.limits.max_image_pixels,
                             on_progress=self._on_progress, listeners=listeners, owner=self.instance.id,
                             lease=self._keeper, lease_seconds=recovery.lease_seconds)
        self.intake.start(watch=watch)
        self.notifier.ready()
        self._report_idle()
        log.info("daemon_ready", watching=watch, pending=len(self.intake.pending), counts=self.ledger.counts())

    def shutdown(self) -> None:
        """Stop the watcher, close the ledger, say goodbye."""
        self.notifier.stopping()
        if self.intake is not None:
            self.intake.stop()
        if self._hooks is not None:
            self._hooks.close()
        if self._keeper is not None:
            self._keeper.stop()
        if hasattr(self, "ledger"):
            if hasattr(self, "instance"):
                self.ledger.unregister(self.instance.id)
            log.info("daemon_stopped", finished=self.finished_jobs, failed=self.failed_jobs,
                     counts=self.ledger.counts())
            self.ledger.close()

    def request_stop(self, *, immediately: bool = False) -> None:
        """Ask the loop to stop: after the running job, or (immediately) between two steps of it."""
        self.must_stop_now = self.must_stop_now or immediately or self.should_stop
        self.should_stop = True
        self.events.put(STOP)

    def install_signal_handlers(self) -> None:
        """First SIGTERM/SIGINT: finish the running job, then stop. Second: stop between steps."""
        def handle(signum, frame):  # only flags and a queue put: nothing else is safe here
            self.request_stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    # -- one turn of the loop ------------------------------------------------------------------

    def run_once(self, timeout: float) -> None:
        """Take what the watcher saw, scan when due, admit what is complete, run at most one job."""
        has_work = self.ledger.counts()[JobState.QUEUED.value] and not self.pause.is_paused
        self._drain_events(timeout=0 if has_work else timeout)
        self.intake.tick()
        self._admit_ready()
        if self.should_stop:
            return
        if not self.intake.is_available:
            self.notifier.status(f"inbox unavailable ({self.intake.unavailable_reason}): intake paused")
        elif not self.pause.is_paused or self._outbox_is_back():
            job = self.ledger.claim_next(self.instance.id, self.clock.time(), self.settings.recovery.lease_seconds)
            if job is not None:
                self._run_job(job)
        self.notifier.watchdog()

    def is_idle(self) -> bool:
        """Nothing waiting to settle or pair, nothing queued, and the outbox writable."""
        return (self.intake.is_idle() and self.ledger.counts()[JobState.QUEUED.value] == 0
                and not self.pause.is_paused)

    def _drain_events(self, timeout: float) -> None:
        try:
            item = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is not STOP:
                self.intake.notice(item)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return

    def _admit_ready(self) -> None:
        ready_inputs = self.intake.take_ready(self.clock.time())
        for ready in ready_inputs:
            path = ready.image or ready.sidecar
            try:
                admissions = self.admitter.admit(ready, now=self.clock.time())
            except NotReadyYet:
                log.info("input_not_ready", input=str(path), reason="does not decode yet; still arriving?")
                self.intake.retry_later(path, delay=NOT_READY_RETRY_SECONDS)
                continue
            except OSError as exc:  # vanished or unreadable between stat and read: look again later
                log.info("input_unreadable", input=str(path), error=str(exc))
                self.intake.retry_later(path, delay=NOT_READY_RETRY_SECONDS)
                continue
            except Exception:  # the one broad catch around one input: no file may stop the queue
                log.exception("input_crashed_admission", input=str(path))
                continue
            for admission in admissions:  # one per variant and seed
                self._store(admission, path)
        if ready_inputs:
            self._report_idle()

    def _store(self, admission, path) -> None:
        job = admission.job
        if admission.is_known:
            log.debug("input_already_known", input=job.input, job_id=job.id)
            return
        if admission.error is not None:
            if self.ledger.enqueue(job):  # False: another instance admitted the same file a moment ago
                self._refuse(job, admission.error, path)
            return
        earlier = self.ledger.find_done_by_content(job.content_key)
        try:
            if earlier is not None and self.runner.reuse_results(job, earlier):
                return
        except OutboxUnavailable as exc:  # the job is queued: it is generated once the outbox is back
            self._pause(exc)
            return
        if not self.ledger.enqueue(job):
            return
        log.info("job_queued", job_id=job.id, input=job.input, sidecar=job.sidecar, seed=job.seed,
                 priority=job.priority, output=job.output)
        self.runner.notify(job, JobState.QUEUED)

    def _refuse(self, job: Job, error, path) -> None:
        try:
            self.runner.record_failure(job, error)
        except OutboxUnavailable as exc:
            # No error file, so no refusal yet: forget the job and look at the file again later.
            self.ledger.forget(job.id)
            self._pause(exc)
            self.intake.retry_later(path, delay=self.pause.wait)
            return
        self.failed_jobs += 1

    def _run_job(self, job: Job) -> None:
        assert self._keeper is not None
        self._keeper.hold(job.id)
        self.status_text = f"running {job.id}: {job.input}"
        try:
            state = self.runner.run(job)
        except JobInterrupted:
            self.ledger.release(job.id, self.instance.id)
            log.warning("job_interrupted", job_id=job.id, input=job.input)
            return
        except LeaseLost:
            log.error("job_abandoned", job_id=job.id, input=job.input, reason="lease lost to another instance")
            return
        except OutboxUnavailable as exc:
            self.ledger.release(job.id, self.instance.id)
            log.warning("job_postponed", job_id=job.id, input=job.input, reason=exc.reason)
            self._pause(exc)
            return
        finally:
            self._keeper.drop()
            self._report_idle()
        self.finished_jobs += 1
        if state is JobState.FAILED:
            self.failed_jobs += 1

    # -- status --------------------------------------------------------------------------------

    def _pause(self, exc: OutboxUnavailable) -> None:
        wait = self.pause.pause(exc)
        log.warning("outbox_unavailable", reason=exc.reason, errno=exc.errno_name, detail=exc.detail,
                    fix=exc.fix, retry_in_seconds=round(wait, 1))
        self._report_idle()

    def _outbox_is_back(self) -> bool:
        if not self.pause.is_due():
            return False
        try:
            self.pause.try_again()
        except OutboxUnavailable as exc:
            self._pause(exc)
            return False
        log.info("outbox_available", paused_seconds=round(self.pause.last_pause_seconds, 1))
        self._report_idle()
        return True

    def _on_progress(self, job: Job, step: int, total: int) -> None:
        assert self._keeper is not None
        self._keeper.check()
        if self.must_stop_now:
            raise JobInterrupted(job.id)
        queued = self.ledger.counts()[JobState.QUEUED.value]
        self.notifier.status(f"job {job.id}: {job.input}, step {step}/{total}, {queued} queued")
        self.notifier.watchdog()

    def _report_idle(self) -> None:
        counts = self.ledger.counts()
        if self.pause.is_paused:
            self.status_text = f"paused: {self.pause.describe()}"
        else:
            self.status_text = (f"idle, {counts[JobState.QUEUED.value]} queued, "
                                f"{len(self.intake.pending)} waiting to settle or pair")
        self.notifier.status(self.status_text)
