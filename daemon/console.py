"""A foreground `vidrop run` at a terminal: events as readable lines in local time, and one live line for the
running job (input, step n of N, elapsed, ETA) drawn by rich below them. Piped or under systemd, none of this:
logs.py keeps JSON lines or journald fields there."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from vidrop.daemon.ledger.base import Job, JobState


def local_timestamp(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: the time in the machine's own zone, with its offset (`2026-12-02 14:05:03+01:00`)."""
    event_dict["timestamp"] = datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")
    return event_dict


class TerminalLog:
    """structlog's sink in the console format: each rendered event printed through rich, so that it lands
    above the live progress line while there is one."""

    def __init__(self, stream: TextIO) -> None:
        self.console = Console(file=stream, highlight=False, soft_wrap=True, emoji=False, markup=False)

    @property
    def is_terminal(self) -> bool:
        """Whether a person watches (a live line makes sense); a pipe or a file gets plain lines only."""
        return self.console.is_terminal

    def msg(self, message: str) -> None:
        """Print one rendered event (the ConsoleRenderer's colours kept)."""
        self.console.print(Text.from_ansi(message))

    debug = info = warning = warn = error = critical = exception = fatal = log = msg

    def progress(self) -> JobProgress | None:
        """The live line for this terminal; None when no one watches."""
        return JobProgress(self.console) if self.is_terminal else None


class _StepsColumn(ProgressColumn):
    """`hero.png  step 12 of 40` (before the first step: `loading`); plain text, whatever the name holds."""

    def render(self, task: Task) -> Text:
        steps = f"step {int(task.completed)} of {int(task.total)}" if task.total else "loading"
        return Text(f"{task.fields['input']}  {steps}")


class JobProgress:
    """A JobListener and the runner's step callback, on the loop's thread: the live line shows while a job
    runs on this instance and goes when it ends (its job_finished event stays above)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._job_id: str | None = None

    @property
    def is_showing(self) -> bool:
        """Whether the live line is on the terminal now."""
        return self._progress is not None

    def job_changed(self, job: Job, state: JobState, details: dict[str, Any]) -> None:
        """Start the line when this instance starts a job; end it when that job ends (other jobs' changes,
        such as inputs admitted meanwhile, leave it alone)."""
        if state is JobState.RUNNING:
            self._start(job)
        elif job.id == self._job_id:
            self.close()

    def step(self, job: Job, step: int, total: int) -> None:
        """Between two denoising steps: move the line on."""
        progress = self._progress if self._progress is not None and job.id == self._job_id else self._start(job)
        progress.update(progress.task_ids[0], completed=step, total=total)

    def close(self) -> None:
        """Take the line away (the job ended, or the daemon stops)."""
        if self._progress is not None:
            self._progress.stop()
        self._progress, self._job_id = None, None

    def _start(self, job: Job) -> Progress:
        self.close()
        progress = Progress(
            _StepsColumn(),
            BarColumn(bar_width=24),
            TimeElapsedColumn(),
            TextColumn("ETA", style="dim", markup=False),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            refresh_per_second=4,
        )
        progress.add_task("", total=None, input=job.input)
        progress.start()
        self._progress, self._job_id = progress, job.id
        return progress
