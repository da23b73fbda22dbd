"""Daemon: startup → loop → shutdown. Signal handlers only set flags."""

from __future__ import annotations

import queue
import signal
import threading
from pathlib import PurePosixPath
from typing import Callable, Sequence, TypeVar

import structlog

from config.settings import ConfigError, Settings, flat_settings, is_live_setting
from daemon.clock import Clock, SystemClock
from daemon.debug_hooks import DebugHooks
from daemon.hooks import HookDispatcher
from daemon.gallery.writer import GalleryWriter
from daemon.inputs import InputDisposal
from daemon.instance import instance_token, this_instance
from daemon.intake.admit import Admitter, NotReadyYet
from daemon.intake.pending import ReadyInput
from daemon.intake.intake import Intake
from daemon.intake.taken import TakenInputs
from daemon.intake.watch import STOP
from daemon.lease import LeaseKeeper, LeaseLost
from daemon.ledger import open_ledger
from daemon.ledger.base import Job, JobState, LedgerUnavailable
from daemon.ledger_pause import LedgerPause, wait_out
from daemon.logs import set_level
from daemon.names import shown
from daemon.outbox import Outbox, OutboxUnavailable
from daemon.outbox_pause import OutboxPause
from daemon.runner import InboxUnavailable, JobInterrupted, JobListener, Runner
from daemon.status import StatusLine
from daemon.systemd import Notifier, NullNotifier
from pipeline.generate import Generator

log = structlog.get_logger()

GeneratorFactory = Callable[[Settings], Generator]
SettingsLoader = Callable[[], Settings]
NOT_READY_RETRY_SECONDS = 2.0
# How long one intake pass between two steps of a running job may admit inputs (hashing, decoding).
INTAKE_BUDGET_SECONDS = 0.5
T = TypeVar("T")


class Daemon:
    """The hot-folder daemon. `run()` for the service, `run(once=True)` to drain the inbox and exit."""

    def __init__(self, settings: Settings, *, generator_factory: GeneratorFactory, clock: Clock | None = None,
                 notifier: Notifier | None = None, listeners: Sequence[JobListener] = (),
                 settings_loader: SettingsLoader | None = None) -> None:
        self.settings = settings
        self.generator_factory = generator_factory
        self.clock = clock or SystemClock()
        self.notifier = notifier or NullNotifier()
        self.listeners = list(listeners)
        self.settings_loader = settings_loader
        self.events: queue.Queue = queue.Queue()
        self.should_stop = False
        self.must_stop_now = False
        self._stopping = threading.Event()
        self._last_job_ended = self.clock.monotonic()
        self._is_model_unloaded = False
        self.should_reload = False
        self.stop_deadline: float | None = None
        self._has_announced_stopping = False
        self._is_watching = False
        self._intake_settings = settings.intake
        self.status_line = StatusLine()
        self.debug_hooks = DebugHooks(settings.debug)
        self.failed_jobs = 0
        self.finished_jobs = 0
        self.intake: Intake | None = None
        self._hooks: HookDispatcher | None = None
        self.gallery: GalleryWriter | None = None
        self._keeper: LeaseKeeper | None = None
        self._next_intake_pass = 0.0
        self.status_text = "starting"
        self._last_queued = 0  # the queue's length the last time the ledger told it
        self._outages_handled = 0

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
        ledger = self._wait_out_ledger(lambda: open_ledger(settings.ledger_url, settings.state_dir,
                                                           busy_seconds=recovery.ledger_busy_seconds))
        if ledger is None:  # stopped while waiting
            return
        self.ledger = ledger
        log.info("daemon_starting", inbox=str(settings.inbox), outbox=str(settings.outbox),
                 ledger=type(self.ledger).__name__, schema_version=self.ledger.schema_version())
        self.notifier.status("loading model")
        self.generator = self.generator_factory(settings)
        described = self.generator.describe()
        log.info("model_loaded", **described)
        self.instance = this_instance(str(described.get("device", "?")), self.clock.time())
        if self._wait_out_ledger(lambda: self.ledger.register(self.instance) or True) is None:
            return
        self.outbox = Outbox(settings.outbox, owner=instance_token(self.instance.id),
                             x264_preset=settings.output.x264_preset)
        self.pause = OutboxPause(self.outbox, clock=self.clock, first_wait=recovery.outbox_retry_seconds,
                                 longest_wait=recovery.outbox_retry_max_seconds)
        self.ledger_pause = LedgerPause(self._probe_ledger, clock=self.clock, first_wait=recovery.ledger_retry_seconds,
                                        longest_wait=recovery.ledger_retry_max_seconds)
        # Temporary files of instances that stopped heartbeating are no one's; a live one's are left alone.
        live = {instance_token(i.id) for i in self.ledger.status(self.clock.time()).instances
                if i.seen_at >= self.clock.time() - recovery.lease_seconds}
        removed = self.outbox.remove_stale_temporaries(live_owners=live)
        self._keeper = LeaseKeeper(self.ledger, instance_id=self.instance.id, clock=self.clock,
                                   lease_seconds=recovery.lease_seconds, describe=lambda: self.status_text)
        self._keeper.start()
        log.info("instance_registered", instance=self.instance.id, host=self.instance.host, pid=self.instance.pid,
                 device=self.instance.device, stale_temporaries_removed=len(removed))
        self.disposal = InputDisposal(settings, self.ledger)
        listeners = [*self.listeners, self.disposal]
        if settings.hooks.is_configured:
            self._hooks = HookDispatcher(settings.hooks, dead_letter=settings.dead_letter_path)
            self._hooks.start()
            listeners.append(self._hooks)
        if settings.gallery.enabled and not hasattr(self.ledger, "folder_jobs"):
            log.warning("gallery_unavailable", reason="the gallery reads the SQLite ledger; this one is not",
                        ledger=type(self.ledger).__name__)
        elif settings.gallery.enabled:
            self.gallery = GalleryWriter(ledger=self.ledger, outbox=settings.outbox, clock=self.clock,
                                         page_size=settings.gallery.page_size,
                                         refresh_seconds=settings.gallery.refresh_seconds,
                                         progress_interval=settings.gallery.refresh_seconds / 2)
            self.gallery.rebuild(every_page=False)  # requeued jobs, and pages written by an older version
            listeners.append(self.gallery)
        self.runner = Runner(ledger=self.ledger, outbox=self.outbox, generator=self.generator, inbox=settings.inbox,
                             clock=self.clock, max_image_pixels=settings.limits.max_image_pixels,
                             on_progress=self._on_progress, listeners=listeners, memory=settings.memory,
                             wait=self._stopping.wait, on_status=self._on_memory_wait, owner=self.instance.id,
                             lease=self._keeper, lease_seconds=recovery.lease_seconds,
                             on_input_changed=self._notice_input, max_lost_attempts=recovery.max_attempts,
                             ledger_pause=self.ledger_pause)
        self._is_watching = watch
        self.taken = TakenInputs(settings.inbox, store=self.ledger)
        log.info("taken_inputs_loaded", inputs=self.taken.load())
        self._start_intake()
        self.notifier.ready()  # only now: the model is loaded and the inbox is watched
        self._report_idle()
        log.info("daemon_ready", watching=watch, pending=len(self.intake.pending), counts=self.ledger.counts())

    def _wait_out_ledger(self, step: Callable[[], T]) -> T | None:
        """A ledger step at start, tried again while the ledger is unavailable; None if asked to stop meanwhile."""
        recovery = self.settings.recovery
        return wait_out(step, clock=self.clock, first_wait=recovery.ledger_retry_seconds,
                        longest_wait=recovery.ledger_retry_max_seconds, wait=self._stopping.wait,
                        say=lambda text: self.notifier.status(f"waiting: {text}"))

    def shutdown(self) -> None:
        """Stop the watcher, close the ledger, say goodbye."""
        self._announce_stopping()
        if self.intake is not None:
            self.intake.stop()
        if self._hooks is not None:
            self._hooks.close()
        if self._keeper is not None:
            self._keeper.stop()
        if hasattr(self, "ledger"):
            counts = None
            try:
                if self.gallery is not None:
                    self.gallery.flush(force=True)  # the last state, without the self-refresh once nothing is pending
                if hasattr(self, "instance"):
                    self.ledger.unregister(self.instance.id)
                counts = self.ledger.counts()
            except LedgerUnavailable as exc:  # a job still running in it is taken over once its lease runs out
                log.warning("ledger_unavailable_at_stop", reason=exc.reason, detail=exc.detail)
            log.info("daemon_stopped", finished=self.finished_jobs, failed=self.failed_jobs, counts=counts)
            self.ledger.close()

    def request_stop(self, *, immediately: bool = False) -> None:
        """Ask the loop to stop: after the running job if it ends within service.stop_timeout_seconds,
        else (or immediately, or on a second request) between two of its steps, and the job is queued again."""
        self.must_stop_now = self.must_stop_now or immediately or self.should_stop
        if self.stop_deadline is None:
            self.stop_deadline = self.clock.monotonic() + self.settings.service.stop_timeout_seconds
        self.should_stop = True
        self._stopping.set()
        self.events.put(STOP)

    def request_reload(self) -> None:
        """Ask the loop to re-read the settings at its next turn (SIGHUP, `systemctl reload`)."""
        self.should_reload = True
        self.events.put(STOP)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop (a second one: at once); SIGHUP: reload the live settings."""
        def handle_stop(signum, frame):  # only flags and a queue put: nothing else is safe here
            self.request_stop()

        def handle_reload(signum, frame):
            self.request_reload()

        signal.signal(signal.SIGTERM, handle_stop)
        signal.signal(signal.SIGINT, handle_stop)
        signal.signal(signal.SIGHUP, handle_reload)

    def reload(self) -> None:
        """Re-read the settings: apply the live ones (log level, defaults, limits, intake, stop timeout),
        name the ones that need a restart (folders, model, device) in a warning."""
        self.should_reload = False
        if self.settings_loader is None:
            return
        self.notifier.reloading()
        try:
            fresh = self.settings_loader()
        except ConfigError as exc:
            log.warning("reload_failed", error=str(exc), fix="fix the settings; the old ones stay in force")
            self.notifier.ready()
            return
        before, after = flat_settings(self.settings), flat_settings(fresh)
        changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
        live = [name for name in changed if is_live_setting(name)]
        needs_restart = [name for name in changed if not is_live_setting(name)]
        self._apply_live_settings(fresh)
        log.info("settings_reloaded", changed=live, values={name: after.get(name) for name in live})
        if needs_restart:
            log.warning("settings_need_restart", settings=needs_restart,
                        fix="restart vidrop (systemctl restart vidrop) to apply them")
        self.notifier.ready()
        self._report_idle()

    def _apply_live_settings(self, fresh: Settings) -> None:
        self.settings = self.settings.model_copy(update={
            "log_level": fresh.log_level, "generation": fresh.generation, "limits": fresh.limits,
            "intake": fresh.intake, "service": fresh.service, "debug": fresh.debug,
        })
        settings = self.settings
        set_level(settings.log_level)
        self.generator.set_limits(settings.limits)
        self.runner.max_image_pixels = settings.limits.max_image_pixels
        self.disposal = InputDisposal(settings, self.ledger)
        self.runner.listeners = [self.disposal if isinstance(listener, InputDisposal) else listener
                                 for listener in self.runner.listeners]
        self.debug_hooks = DebugHooks(settings.debug)
        if fresh.intake != self._intake_settings:
            self.intake.stop()  # a new intake with the new rules; its first scan finds what waited
            self._start_intake()
        else:
            self.admitter = Admitter(settings, self.generator, self.intake.is_junk, is_known=self.ledger.has_key)

    def _start_intake(self) -> None:
        """Intake (watcher, scans, pending inputs) and the admitter, with the current settings."""
        settings = self.settings
        self._intake_settings = settings.intake
        self.intake = Intake(settings.inbox, settings.intake, self.events, self.clock, taken=self.taken)
        self.admitter = Admitter(settings, self.generator, self.intake.is_junk, is_known=self.ledger.has_key)
        self.intake.start(watch=self._is_watching)

    # -- one turn of the loop ------------------------------------------------------------------

    def run_once(self, timeout: float) -> None:
        """One turn, or, while the ledger is unavailable, a wait for it: nothing is claimed or admitted, the
        watcher's events are kept, and the ledger is tried again with back-off. The watchdog is fed either way."""
        try:
            if self.ledger_pause.is_paused:
                self._wait_for_ledger(timeout)
            else:
                if self.ledger_pause.outages != self._outages_handled:
                    self._after_ledger_outage()
                    self._outages_handled = self.ledger_pause.outages
                self._turn(timeout)
        except LedgerUnavailable as exc:
            self._pause_ledger(exc)
        self.notifier.watchdog()

    def _turn(self, timeout: float) -> None:
        """Take what the watcher saw, scan when due, admit what is complete, run at most one job;
        then feed the watchdog (only this loop does, so a hung loop lets it fire)."""
        has_work = self.ledger.queued_count() and not self.pause.is_paused
        self._drain_events(timeout=0 if has_work else timeout)
        if self.should_reload:
            self.reload()
        self.intake.tick()
        self._read_retried_refusals()
        self._admit_ready()
        if self.should_stop:
            return
        if not self.intake.is_available:  # the queued jobs' images are on it too: no job starts
            self.notifier.status(f"inbox unavailable ({self.intake.unavailable_reason}): intake paused")
            self._unload_if_idle()
        elif not self.pause.is_paused or self._outbox_is_back():
            job = self.ledger.claim_next(self.instance.id, self.clock.time(), self.settings.recovery.lease_seconds,
                                         prefer_models=self.generator.resident_models(),
                                         patience_seconds=self.settings.pipeline.switch_after_seconds)
            if job is not None:
                self._run_job(job)
            else:
                self._unload_if_idle()
        else:
            self._unload_if_idle()
        if self.gallery is not None:
            self.gallery.flush()  # changes held back by the once-a-second limit
        self.notifier.watchdog()

    def is_idle(self) -> bool:
        """Nothing waiting to settle or pair, nothing queued, and the outbox and the ledger usable."""
        if self.ledger_pause.is_paused:
            return False
        try:
            return (self.intake.is_idle() and self.ledger.queued_count() == 0
                    and not self.pause.is_paused)
        except LedgerUnavailable as exc:
            self._pause_ledger(exc)
            return False

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

    def _admit_ready(self, *, until: float | None = None) -> None:
        """Admit what is complete; with until (a monotonic time), what is left then waits for a later pass."""
        ready_inputs = self.intake.take_ready()
        try:
            for index, ready in enumerate(ready_inputs):
                if self.should_stop:  # the rest were not admitted: the next start looks at them again
                    log.info("intake_interrupted", reason="stopping", not_admitted=len(ready_inputs) - index)
                    break
                if until is not None and self.clock.monotonic() >= until:
                    for later in ready_inputs[index:]:
                        self.intake.retry_later(later.image or later.sidecar, delay=0)
                    log.debug("intake_deferred", reason="a job is running", not_admitted=len(ready_inputs) - index)
                    break
                try:
                    self._admit(ready)
                except LedgerUnavailable:  # neither refused nor lost: this input and the rest wait for the ledger
                    for waiting in ready_inputs[index:]:
                        self.intake.retry_later(waiting.image or waiting.sidecar, delay=NOT_READY_RETRY_SECONDS)
                    raise
                self.notifier.watchdog()  # a long batch (the first start over a big inbox) is progress too
        finally:
            self.taken.save()
        if ready_inputs and until is None:
            self._report_idle()

    def _intake_while_running(self) -> None:
        """Between two steps of a job (or while it waits for memory): files dropped meanwhile are queued now,
        not when the job ends. On the loop's own thread and ledger connection, so SQLite and PostgreSQL see
        one writer as between jobs; at most every tick and for INTAKE_BUDGET_SECONDS, so the job goes on."""
        now = self.clock.monotonic()
        if now < self._next_intake_pass or self.intake is None:
            return
        self._next_intake_pass = now + self.settings.intake.tick_seconds
        job_context = structlog.contextvars.get_contextvars()
        structlog.contextvars.clear_contextvars()  # these events are not the running job's
        try:
            self._drain_events(timeout=0)  # a STOP item only wakes the loop; its flags stay set
            self.intake.tick()
            self._read_retried_refusals()
            self._admit_ready(until=now + INTAKE_BUDGET_SECONDS)
        except LedgerUnavailable as exc:  # what was not admitted waits; the job goes on, its commit waits too
            self._pause_ledger(exc)
        except Exception:  # the one broad catch around this pass: intake's trouble must not fail the job
            log.exception("intake_failed_while_running")
        finally:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(**job_context)

    def _read_retried_refusals(self) -> None:
        """`vidrop retry` queued refusals again (they have no request to run): intake reads their files again."""
        for job in self.ledger.requeued_refusals():
            self.ledger.forget(job.id)
            log.info("input_retried", job_id=job.id, input=job.input, action="read again")
            self._look_again(job.input)

    def _look_again(self, relative_input: str) -> None:
        """Intake reads an input again soon, even unchanged (`vidrop retry`)."""
        self.intake.retry_later(self.settings.inbox.joinpath(*PurePosixPath(relative_input).parts), delay=0)

    def _notice_input(self, relative_input: str) -> None:
        """An input changed under its queued job: intake takes its new bytes, unless it already has."""
        self.intake.notice(self.settings.inbox.joinpath(*PurePosixPath(relative_input).parts))

    def _admit(self, ready: ReadyInput) -> None:
        """One input's jobs into the ledger; once that is settled, its snapshot too (unchanged, it is passed over)."""
        path = ready.image or ready.sidecar
        try:
            admissions = self.admitter.admit(ready, now=self.clock.time())
        except NotReadyYet:
            log.info("input_not_ready", input=str(path), reason="does not decode yet; still arriving?")
            self.intake.retry_later(path, delay=NOT_READY_RETRY_SECONDS)
            return
        except OSError as exc:  # vanished or unreadable between stat and read: look again later
            log.info("input_unreadable", input=str(path), error=str(exc))
            self.intake.retry_later(path, delay=NOT_READY_RETRY_SECONDS)
            return
        except Exception:  # the one broad catch around one input: no file may stop the queue
            log.exception("input_crashed_admission", input=str(path))
            return
        with self.disposal.held():  # decided once every job of the input is stored
            settled = [self._store(admission, path) for admission in admissions]  # one per variant and seed
        if admissions and all(settled):
            self.taken.remember(path, ready.image_snapshot or ready.sidecar_snapshot,
                                ready.sidecar_snapshot if ready.image is not None else None,
                                admissions[0].job.key, self.clock.time())

    def _store(self, admission, path) -> bool:
        """Store one admission; False when the input must be looked at again (its refusal could not be written)."""
        job = admission.job
        if admission.is_known:
            log.debug("input_already_known", input=job.input, job_id=job.id)
            return True
        if admission.error is not None:
            if self.ledger.enqueue(job):  # False: another instance admitted the same file a moment ago
                with structlog.contextvars.bound_contextvars(stage="intake"):
                    return self._refuse(job, admission.error, path)
            return True
        try:
            earlier_jobs = self.ledger.done_by_content(job.content_key)  # the first whose results are intact
            if any(self.runner.reuse_results(job, earlier) for earlier in earlier_jobs):
                return True
        except OutboxUnavailable as exc:  # the job is queued: it is generated once the outbox is back
            self._pause(exc)
            return True
        if not self.ledger.enqueue(job):
            return True
        log.info("job_queued", job_id=job.id, input=job.input, sidecar=job.sidecar, seed=job.seed,
                 priority=job.priority, output=job.output, stage="intake")
        self.runner.notify(job, JobState.QUEUED)
        return True

    def _refuse(self, job: Job, error, path) -> bool:
        try:
            self.runner.record_failure(job, error)
        except OutboxUnavailable as exc:
            # No error file, so no refusal yet: forget the job and look at the file again later.
            self.ledger.forget(job.id)
            self._pause(exc)
            self.intake.retry_later(path, delay=self.pause.wait)
            return False
        self.failed_jobs += 1
        return True

    def _run_job(self, job: Job) -> None:
        assert self._keeper is not None
        self._keeper.hold(job.id, job.claims)
        self.status_line.job_started()
        self.status_text = f"running {job.id}: {shown(job.input)}"  # for the ledger and sd_notify: valid text
        if not job.params:  # a refusal `vidrop retry` queued again, claimed before intake read it again
            self._keeper.drop()
            self.ledger.forget(job.id)
            self._look_again(job.input)
            return
        try:
            state = self.runner.run(job)
        except JobInterrupted:
            self.ledger.release(job.id, self.instance.id, token=job.claims)
            log.warning("job_abandoned", job_id=job.id, input=job.input, state=JobState.QUEUED.value,
                        reason="stopping", stop_timeout_seconds=self.settings.service.stop_timeout_seconds)
            self.notifier.status(f"stopping; {job.input} queued again")
            self.runner.notify(job, JobState.QUEUED)  # back in the queue: pages must not say it is running
            return
        except LeaseLost:
            log.error("job_abandoned", job_id=job.id, input=job.input, reason="lease lost to another instance")
            return
        except InboxUnavailable:
            self.ledger.release(job.id, self.instance.id, token=job.claims)
            log.warning("job_postponed", job_id=job.id, input=job.input, reason="the inbox is unavailable")
            self.runner.notify(job, JobState.QUEUED)
            self.intake.scan_now()  # it finds the inbox gone and pauses intake and jobs until it is back
            return
        except OutboxUnavailable as exc:
            self.ledger.release(job.id, self.instance.id, token=job.claims)
            log.warning("job_postponed", job_id=job.id, input=job.input, reason=exc.reason)
            self.runner.notify(job, JobState.QUEUED)
            self._pause(exc)
            return
        finally:
            self._keeper.drop()
            self._last_job_ended = self.clock.monotonic()
            self._is_model_unloaded = False
            self._report_idle()
        if state is None:  # superseded by its input's new bytes, or its moved input has a job of its own
            return
        self.finished_jobs += 1
        if state is JobState.FAILED:
            self.failed_jobs += 1

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

    def _pause_ledger(self, exc: LedgerUnavailable) -> None:
        self.ledger_pause.pause(exc)
        self._report_idle()
        if self.gallery is not None:
            self.gallery.show_notice(self.ledger_pause.describe())

    def _probe_ledger(self) -> None:
        """A small write (a full disk still lets the ledger be read); a new ledger file learns of this instance."""
        if not self.ledger.seen(self.instance.id, self.clock.time(), self.status_text):
            self.ledger.register(self.instance)

    def _wait_for_ledger(self, timeout: float) -> None:
        """Keep the watcher's events and the stop and reload requests; try the ledger again when due."""
        self._drain_events(timeout=min(timeout, self.ledger_pause.seconds_to_next_try()))
        if self.should_reload:
            self.reload()
        if self.should_stop or self.ledger_pause.seconds_to_next_try() > 0:
            return
        if not self.ledger_pause.try_again():
            self._report_idle()
            if self.gallery is not None:
                self.gallery.show_notice(self.ledger_pause.describe())

    def _after_ledger_outage(self) -> None:
        """The ledger may have lost what it knew (a new or restored SQLite file, a failover): read the taken
        inputs again and scan the whole inbox. Known keys cost a hash; results in the outbox are not made again."""
        if self.gallery is not None:
            self.gallery.show_notice(None)
        self.taken = TakenInputs(self.settings.inbox, store=self.ledger)
        log.info("taken_inputs_loaded", inputs=self.taken.load())
        self.intake.stop()
        self._start_intake()
        self._report_idle()

    def _on_progress(self, job: Job, step: int, total: int) -> None:
        """Between two denoising steps: stop if asked, tell systemd how far, feed the watchdog."""
        assert self._keeper is not None
        self._keeper.check()
        self.debug_hooks.on_step(job, step)
        if self.must_stop_now or (self.stop_deadline is not None and self.clock.monotonic() >= self.stop_deadline):
            raise JobInterrupted(job.id)
        queued = self._last_queued
        if not self.ledger_pause.is_paused:  # else each step would wait out the ledger's timeout
            try:
                queued = self._last_queued = self.ledger.queued_count()
            except LedgerUnavailable as exc:  # the job goes on; recording its outcome waits for the ledger
                self.ledger_pause.pause(exc)
        text = self.status_line.step(job_input=job.input, step=step, total=total, queued=queued,
                                     now=self.clock.monotonic())
        if self.should_stop:
            self._announce_stopping()
            text = f"stopping after this job or in {self.stop_deadline - self.clock.monotonic():.0f} s; {text}"
        if self.ledger_pause.is_paused:
            text = f"{text}; paused: {self.ledger_pause.describe()}"
        self.notifier.status(text)
        if self.gallery is not None and not self.ledger_pause.is_paused:
            try:
                self.gallery.job_progress(job, step, total)
            except LedgerUnavailable as exc:
                self.ledger_pause.pause(exc)
        if not self.ledger_pause.is_paused:
            self._intake_while_running()
        self.notifier.watchdog()

    def _on_memory_wait(self, text: str) -> None:
        """A job waits for device memory: the loop is alive (it polls), so the watchdog is fed too."""
        self.notifier.status(text)
        self._intake_while_running()
        self.notifier.watchdog()

    def _announce_stopping(self) -> None:
        """STOPPING=1 once, as soon as the loop sees the request (a running job may still finish)."""
        if not self._has_announced_stopping:
            self._has_announced_stopping = True
            self.notifier.stopping()

    def _report_idle(self) -> None:
        if self.should_stop:
            self.status_text = "stopping"
        elif self.ledger_pause.is_paused:
            self.status_text = f"paused: {self.ledger_pause.describe()}; no new jobs"
        elif self.pause.is_paused:
            self.status_text = f"paused: {self.pause.describe()}"
        elif not self.intake.is_available:
            self.status_text = f"inbox unavailable ({self.intake.unavailable_reason}): intake paused"
        else:
            try:
                queued = self._last_queued = self.ledger.queued_count()
            except LedgerUnavailable as exc:
                self._pause_ledger(exc)
                return
            unloaded = ", model unloaded" if self._is_model_unloaded else ""
            polling = f", polling: {self.intake.polling_reason}" if self.intake.polling_reason else ""
            self.status_text = self.status_line.idle(queued, len(self.intake.pending)) + unloaded + polling
        self.notifier.status(self.status_text)
