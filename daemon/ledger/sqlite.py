"""The SQLite ledger in the state directory (stdlib sqlite3, WAL): one host, any number of instances."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from daemon.ledger.base import Job, JobState
from daemon.ledger.sql import COLUMNS, INSERT_JOB, SqlLedger, _from_row, _to_row
from daemon.names import from_ledger_text, ledger_text

BUSY_TIMEOUT_SECONDS = 60

# Indexes for the gallery's views (SQLite only).
GALLERY_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_folder ON jobs (rtrim(input, replace(input, '/', '')), created_at);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (state, finished_at);
"""

# The folder part of an input path with its trailing slash ("a/b/" for "a/b/c.png", "" at the top):
# rtrim strips every trailing character that is not a slash.
FOLDER_SQL = "rtrim(input, replace(input, '/', ''))"


class SqliteLedger(SqlLedger):
    """Jobs in one SQLite file. A claim is one BEGIN IMMEDIATE transaction, so two processes never share one."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a done job stays done after a power cut, as the renamed outputs do.
        self._db.execute("PRAGMA synchronous=FULL")
        super().__init__()
        self._db.executescript(GALLERY_INDEXES)

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql, tuple(params))

    def _execute_many(self, sql: str, rows: list[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    def _has_column(self, table: str, column: str) -> bool:
        return any(row[1] == column for row in self._db.execute(f"PRAGMA table_info({table})"))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def enqueue_many(self, jobs: Iterable[Job]) -> int:
        """Store many jobs in one transaction (imports, benchmarks); how many were new."""
        with self._lock, self._transaction():
            before = self._db.total_changes
            self._db.executemany(INSERT_JOB, (_to_row(job) for job in jobs))
            return self._db.total_changes - before

    # -- views for the gallery: added methods, the protocol above is unchanged -------------------

    def folder_jobs(self, folder: str, *, offset: int, limit: int) -> list[Job]:
        """Jobs whose input sits directly in folder ("" for the inbox itself), oldest first, one slice."""
        rows = self._rows(
            f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE {FOLDER_SQL} = ? ORDER BY created_at, rowid LIMIT ? OFFSET ?",
            (_folder_prefix(folder), limit, offset),
        )
        return [_from_row(row) for row in rows]

    def folder_position(self, folder: str, job_id: str) -> int | None:
        """How many of the folder's jobs came before this one (its place, oldest first), or None."""
        found = self._rows("SELECT created_at, rowid FROM jobs WHERE id = ?", (job_id,))
        if not found:
            return None
        this = found[0]
        return self._rows(
            f"SELECT COUNT(*) FROM jobs WHERE {FOLDER_SQL} = ? AND (created_at, rowid) < (?, ?)",
            (_folder_prefix(folder), this[0], this[1]),
        )[0][0]

    def folder_summaries(self) -> dict[str, dict[str, Any]]:
        """Per folder ("" for the inbox itself): jobs in each state and the time of the latest activity."""
        summaries: dict[str, dict[str, Any]] = {}
        for prefix, state, count, latest in self._rows(
            f"SELECT {FOLDER_SQL} AS folder, state, COUNT(*), "
            "MAX(MAX(created_at, COALESCE(started_at, 0), COALESCE(finished_at, 0))) FROM jobs GROUP BY folder, state"
        ):
            summary = summaries.setdefault(from_ledger_text(prefix.rstrip("/")), {**{s.value: 0 for s in JobState}, "latest": 0.0})
            summary[state] = count
            summary["latest"] = max(summary["latest"], latest)
        return summaries

    def queued_ids(self) -> list[str]:
        """Ids of queued jobs in the order they will be claimed."""
        return [row[0] for row in self._rows(
            "SELECT id FROM jobs WHERE state = ? ORDER BY priority DESC, created_at, rowid", (JobState.QUEUED.value,))]

    def recent_jobs(self, state: JobState, limit: int) -> list[Job]:
        """The latest finished jobs in one state, newest first."""
        rows = self._rows(
            f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE state = ? ORDER BY finished_at DESC, rowid DESC LIMIT ?",
            (state.value, limit),
        )
        return [_from_row(row) for row in rows]

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _folder_prefix(folder: str) -> str:
    return f"{ledger_text(folder.strip('/'))}/" if folder.strip("/") else ""
