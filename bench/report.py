"""What every benchmark returns: named figures with their goal, and the ledger read from outside."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from bench.stats import summary


@dataclass
class Figure:
    """One line of the table: a measured quantity over repeated runs, and its goal if it has one."""

    benchmark: str
    name: str
    unit: str
    values: list[float]
    goal: str = ""
    met: bool | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "name": self.name,
            "unit": self.unit,
            **summary(self.values),
            "values": [round(value, 4) for value in self.values],
            "goal": self.goal,
            "met": self.met,
            "note": self.note,
        }


@dataclass(frozen=True)
class JobTimes:
    """A job's state and ledger timestamps (wall clock, seconds)."""

    input: str
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None


class LedgerReader:
    """Reads a running daemon's SQLite ledger (WAL lets another process read while it writes)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None)

    def job(self, relative_input: str) -> JobTimes | None:
        """The job of one input path, if the daemon admitted it."""
        row = self._db.execute(
            "SELECT input, state, created_at, started_at, finished_at FROM jobs WHERE input = ?", (relative_input,)
        ).fetchone()
        return None if row is None else JobTimes(*row)

    def wait_finished(
        self, relative_input: str, *, timeout: float, process: subprocess.Popen | None = None
    ) -> JobTimes:
        """Wait until the input's job is done or failed; TimeoutError, or RuntimeError if the daemon exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(relative_input)
            if job is not None and job.state in ("done", "failed"):
                return job
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"vidrop exited with {process.returncode} before {relative_input} finished")
            time.sleep(0.02)
        raise TimeoutError(f"{relative_input} did not finish within {timeout} s")

    def all_jobs(self) -> list[JobTimes]:
        rows = self._db.execute("SELECT input, state, created_at, started_at, finished_at FROM jobs").fetchall()
        return [JobTimes(*row) for row in rows]

    def close(self) -> None:
        self._db.close()


def figures_to_dicts(figures: Iterable[Figure]) -> list[dict[str, Any]]:
    return [figure.to_dict() for figure in figures]
