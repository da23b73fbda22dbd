"""The one-line STATUS= text that `systemctl status` shows: what runs, how far, what waits."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.gallery.pages import duration
from daemon.names import shown


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
        """"idle, 0 queued" (and how many files still settle), or "job 1 of 3 done, 2 queued" between two jobs;
        a busy stretch ends when nothing is queued."""
        waiting = f", {settling} settling" if settling else ""
        if queued and self.position:
            return f"job {self.position} of {self.position + queued} done, {queued} queued{waiting}"
        if queued == 0:
            self.position = 0
        return f"idle, {queued} queued{waiting}"

    def step(self, *, job_input: str, step: int, total: int, queued: int, now: float) -> str:
        """"job 3 of 12: a/b/photo.png, step 17/50, ETA 40 s"."""
        if self._progress is None:
            self._progress = _Progress(step, now)
        text = f"job {self.position} of {self.position + queued}: {shown(job_input)}, step {step}/{total}"
        done = step - self._progress.first_step
        if done > 0 and total > step:
            remaining = (now - self._progress.first_step_at) / done * (total - step)
            text += f", ETA {duration(remaining)}"
        return text
