"""What the service says about itself: the one-line STATUS= text that `systemctl status` shows (what runs, how
far, what waits), the text in the ledger, the gallery's notice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vidrop.daemon.gallery.pages import duration
from vidrop.daemon.ledger.base import Job, Ledger, LedgerUnavailable
from vidrop.daemon.names import shown
from vidrop.daemon.stop import StopRequest
from vidrop.daemon.systemd import Notifier

if TYPE_CHECKING:
    from vidrop.daemon.gallery.writer import GalleryWriter
    from vidrop.daemon.intake.intake import Intake
    from vidrop.daemon.ledger_pause import LedgerPause
    from vidrop.daemon.outbox_pause import OutboxPause
    from vidrop.daemon.queue_control import QueueWatch


@dataclass
class _Progress:
    first_step: int
    first_step_at: float


class StatusLine:
    """Counts the jobs of the current busy stretch and estimates the running job's remaining time."""

    def __init__(self) -> None:
        self.position = 0  # the running job's number since the queue was last empty
        self._progress: _Progress | None = None

    def job_started(self) -> None:
        """A job was claimed."""
        self.position += 1
        self._progress = None

    def idle(self, queued: int, settling: int) -> str:
        """ "idle, 0 queued" (and how many files still settle), or "job 1 of 3 done, 2 queued" between two jobs;
        a busy stretch ends when nothing is queued."""
        waiting = f", {settling} settling" if settling else ""
        if queued and self.position:
            return f"job {self.position} of {self.position + queued} done, {queued} queued{waiting}"
        if queued == 0:
            self.position = 0
        return f"idle, {queued} queued{waiting}"

    def step(self, *, job_input: str, step: int, total: int, queued: int, now: float) -> str:
        """ "job 3 of 12: a/b/photo.png, step 17/50, ETA 40 s"."""
        if self._progress is None:
            self._progress = _Progress(step, now)
        text = f"job {self.position} of {self.position + queued}: {shown(job_input)}, step {step}/{total}"
        done = step - self._progress.first_step
        if done > 0 and total > step:
            remaining = (now - self._progress.first_step_at) / done * (total - step)
            text += f", ETA {duration(remaining)}"
        return text


class ServiceStatus:
    """What the service says about itself: STATUS= for systemd, the text each instance leaves in the ledger,
    the gallery's notice while the ledger is unavailable."""

    def __init__(
        self,
        *,
        notifier: Notifier,
        stop: StopRequest,
        ledger: Ledger,
        ledger_pause: LedgerPause,
        outbox_pause: OutboxPause,
        gallery: GalleryWriter | None = None,
        queue: QueueWatch | None = None,
    ) -> None:
        self.notifier = notifier
        self.stop = stop
        self.ledger = ledger
        self.ledger_pause = ledger_pause
        self.outbox_pause = outbox_pause
        self.gallery = gallery
        self.line = StatusLine()
        self.text = "starting"  # the instance's line in the ledger (and `vidrop status`)
        self.queued = 0  # the queue's length the last time the ledger told it
        self.is_model_unloaded = False
        self.intake: Intake | None = None
        self._has_announced_stopping = False
        self.queue = queue  # the fleet's queue control (`vidrop pause`, `drain`)

    def job_started(self, job: Job) -> None:
        self.line.job_started()
        self.text = f"running {job.id}: {shown(job.input)}"  # for the ledger and sd_notify: valid text
        self.is_model_unloaded = False

    def idle(self) -> None:
        """Between jobs: idle or how far the busy stretch is, or why nothing moves."""
        intake = self.intake
        if self.stop.is_requested:
            self.text = "stopping"
        elif self.ledger_pause.is_paused:
            self.text = f"paused: {self.ledger_pause.describe()}; no new jobs"
        elif self.outbox_pause.is_paused:
            self.text = f"paused: {self.outbox_pause.describe()}"
        elif intake is not None and not intake.is_available:
            self.text = f"inbox unavailable ({intake.unavailable_reason}): intake paused"
        else:
            try:
                queued = self.queued = self.ledger.queued_count()
            except LedgerUnavailable as exc:
                self.ledger_paused(exc)
                return
            unloaded = ", model unloaded" if self.is_model_unloaded else ""
            polling = f", polling: {intake.polling_reason}" if intake is not None and intake.polling_reason else ""
            settling = len(intake.pending) if intake is not None else 0
            self.text = self.line.idle(queued, settling) + unloaded + polling
            held = self.queue.text if self.queue is not None else None
            if held:
                self.text = f"{held}; {self.text}"
        self.notifier.status(self.text)

    def step(self, job: Job, step: int, total: int) -> None:
        """Between two steps: "job 3 of 12: a/b/photo.png, step 17/50, ETA 40 s", and whether it stops after."""
        if not self.ledger_pause.is_paused:  # else each step would wait out the ledger's timeout
            try:
                self.queued = self.ledger.queued_count()
            except LedgerUnavailable as exc:  # the job goes on; recording its outcome waits for the ledger
                self.ledger_pause.pause(exc)
        text = self.line.step(
            job_input=job.input, step=step, total=total, queued=self.queued, now=self.stop.clock.monotonic()
        )
        if self.stop.is_requested:
            self.announce_stopping()
            text = f"stopping after this job or in {self.stop.seconds_left():.0f} s; {text}"
        if self.ledger_pause.is_paused:
            text = f"{text}; paused: {self.ledger_pause.describe()}"
        if self.queue is not None and self.queue.text:
            text = f"{text}; {self.queue.text}"
        self.notifier.status(text)

    def ledger_paused(self, exc: LedgerUnavailable) -> None:
        self.ledger_pause.pause(exc)
        self.idle()
        self.show_ledger_notice()

    def show_ledger_notice(self) -> None:
        if self.gallery is not None:
            self.gallery.show_notice(self.ledger_pause.describe() if self.ledger_pause.is_paused else None)

    def announce_stopping(self) -> None:
        """STOPPING=1 once, as soon as the loop sees the request (a running job may still finish)."""
        if not self._has_announced_stopping:
            self._has_announced_stopping = True
            self.notifier.stopping()
