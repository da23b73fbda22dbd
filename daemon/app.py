"""Daemon: startup → loop → shutdown. Signal handlers only set flags."""

from __future__ import annotations

import queue
import signal
import threading
from typing import Callable, Sequence

import structlog

from config.settings import Settings
from daemon.clock import Clock, SystemClock
from daemon.hooks import HookDispatcher
from daemon.gallery.writer import GalleryWriter
from daemon.inputs import InputDisposal
from daemon.intake.admit import Admitter, NotReadyYet
from daemon.intake.intake import Intake
from daemon.intake.watch import STOP
from daemon.ledger.base import Job, JobState
from daemon.ledger.sqlite import SqliteLedger
from daemon.outbox import Outbox
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
        self._stopping = threading.Event()
        self._last_job_ended = self.clock.monotonic()
        self._is_model_unloaded = False
        self.failed_jobs = 0
        self.finished_jobs = 0
        self.intake: Intake | None = None
        self._hooks: HookDispatcher | None = None
        self.gallery: GalleryWriter | None = None

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
        self.ledger = SqliteLedger(settings.ledger_path)
        self.outbox = Outbox(settings.outbox)
        requeued = self.ledger.requeue_running()
        removed = self.outbox.remove_stale_temporaries()
        log.info("daemon_starting", inbox=str(settings.inbox), outbox=str(settings.outbox),
                 requeued=requeued, stale_temporaries_removed=len(removed))
        self.notifier.status("loading model")
        self.generator = self.generator_factory(settings)
        log.info("model_loaded", **self.generator.describe())
        self.intake = Intake(settings.inbox, settings.intake, self.events, self.clock)
        self.admitter = Admitter(settings, self.generator, self.intake.is_junk, is_known=self.ledger.has_key)
        listeners = [*self.listeners, InputDisposal(settings)]
        if settings.hooks.is_configured:
            self._hooks = HookDispatcher(settings.hooks, dead_letter=settings.dead_letter_path)
            self._hooks.start()
            listeners.append(self._hooks)
        if settings.gallery.enabled:
            self.gallery = GalleryWriter(ledger=self.ledger, outbox=settings.outbox, clock=self.clock,
                                         page_size=settings.gallery.page_size,
                                         refresh_seconds=settings.gallery.refresh_seconds)
            self.gallery.rebuild(every_page=False)  # requeued jobs, and pages written by an older version
            listeners.append(self.gallery)
        self.runner = Runner(ledger=self.ledger, outbox=self.outbox, generator=self.generator, inbox=settings.inbox,
                             clock=self.clock, max_image_pixels=settings.limits.max_image_pixels,
                             on_progress=self._on_progress, listeners=listeners, memory=settings.memory,
                             wait=self._stopping.wait, on_status=self.notifier.status)
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
        if self.gallery is not None:
            self.gallery.flush(force=True)  # the last state, without the self-refresh once nothing is pending
        if hasattr(self, "ledger"):
            log.info("daemon_stopped", finished=self.finished_jobs, failed=self.failed_jobs,
                     counts=self.ledger.counts())
            self.ledger.close()

    def request_stop(self, *, immediately: bool = False) -> None:
        """Ask the loop to stop: after the running job, or (immediately) between two steps of it."""
        self.must_stop_now = self.must_stop_now or immediately or self.should_stop
        self.should_stop = True
        self._stopping.set()
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
        self._drain_events(timeout=0 if self.ledger.counts()[JobState.QUEUED.value] else timeout)
        self.intake.tick()
        self._admit_ready()
        if self.should_stop:
            return
        if self.intake.is_available:
            job = self.ledger.claim_next(self.clock.time())
            if job is not None:
                self._run_job(job)
            else:
                self._unload_if_idle()
        else:
            self.notifier.status(f"inbox unavailable ({self.intake.unavailable_reason}): intake paused")
            self._unload_if_idle()
        if self.gallery is not None:
            self.gallery.flush()  # changes held back by the once-a-second limit
        self.notifier.watchdog()

    def is_idle(self) -> bool:
        """Nothing waiting to settle or pair, and nothing queued."""
        return self.intake.is_idle() and self.ledger.counts()[JobState.QUEUED.value] == 0

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
                self._store(admission)
        if ready_inputs:
            self._report_idle()

    def _store(self, admission) -> None:
        job = admission.job
        if admission.is_known:
            log.debug("input_already_known", input=job.input, job_id=job.id)
            return
        if admission.error is not None:
            self.ledger.enqueue(job)
            self.failed_jobs += 1
            self.runner.record_failure(job, admission.error)
            return
        earlier = self.ledger.find_done_by_content(job.content_key)
        if earlier is not None and self.runner.reuse_results(job, earlier):
            return
        self.ledger.enqueue(job)
        log.info("job_queued", job_id=job.id, input=job.input, sidecar=job.sidecar, seed=job.seed,
                 priority=job.priority, output=job.output)
        self.runner.notify(job, JobState.QUEUED)

    def _run_job(self, job: Job) -> None:
        try:
            state = self.runner.run(job)
        except JobInterrupted:
            self.ledger.requeue_running()
            log.warning("job_interrupted", job_id=job.id, input=job.input)
            self.runner.notify(job, JobState.QUEUED)  # back in the queue: pages must not say it is running
            return
        finally:
            self._last_job_ended = self.clock.monotonic()
            self._is_model_unloaded = False
        self.finished_jobs += 1
        if state is JobState.FAILED:
            self.failed_jobs += 1
        self._report_idle()

    def _unload_if_idle(self) -> None:
        """After memory.idle_unload_seconds without a job, give the device's memory back to others."""
        limit = self.settings.memory.idle_unload_seconds
        idle = self.clock.monotonic() - self._last_job_ended
        if limit <= 0 or self._is_model_unloaded or idle < limit:
            return
        self._is_model_unloaded = True
        if self.generator.unload():
            log.info("model_idle_unloaded", idle_seconds=round(idle, 3))
            self._report_idle()

    # -- status --------------------------------------------------------------------------------

    def _on_progress(self, job: Job, step: int, total: int) -> None:
        if self.must_stop_now:
            raise JobInterrupted(job.id)
        queued = self.ledger.counts()[JobState.QUEUED.value]
        self.notifier.status(f"job {job.id}: {job.input}, step {step}/{total}, {queued} queued")
        if self.gallery is not None:
            self.gallery.job_progress(job, step, total)
        self.notifier.watchdog()

    def _report_idle(self) -> None:
        counts = self.ledger.counts()
        unloaded = ", model unloaded" if self._is_model_unloaded else ""
        self.notifier.status(f"idle, {counts[JobState.QUEUED.value]} queued, "
                             f"{len(self.intake.pending)} waiting to settle or pair{unloaded}")
