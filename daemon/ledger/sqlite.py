"""The SQLite ledger in the state directory (stdlib sqlite3, WAL)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from daemon.ledger.base import Job, JobState

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    input TEXT NOT NULL,
    sidecar TEXT,
    input_sha256 TEXT NOT NULL,
    sidecar_sha256 TEXT,
    params TEXT NOT NULL,
    seed INTEGER,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    outputs TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    output TEXT NOT NULL DEFAULT '',
    priority INTEGER NOT NULL DEFAULT 0,
    content_key TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, priority, created_at);
CREATE INDEX IF NOT EXISTS jobs_content ON jobs (content_key, state);
CREATE INDEX IF NOT EXISTS jobs_folder ON jobs (rtrim(input, replace(input, '/', '')), created_at);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (state, finished_at);
"""

# The folder part of an input path with its trailing slash ("a/b/" for "a/b/c.png", "" at the top):
# rtrim strips every trailing character that is not a slash.
FOLDER_SQL = "rtrim(input, replace(input, '/', ''))"

COLUMNS = ("id", "key", "state", "input", "sidecar", "input_sha256", "sidecar_sha256", "params", "seed",
           "created_at", "started_at", "finished_at", "attempts", "outputs", "error", "output", "priority",
           "content_key")


class SqliteLedger:
    """Jobs in one SQLite file; each change is one transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def enqueue(self, job: Job) -> bool:
        cursor = self._db.execute(
            f"INSERT OR IGNORE INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            _to_row(job),
        )
        return cursor.rowcount == 1

    def has_key(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM jobs WHERE key = ?", (key,)).fetchone() is not None

    def find_done_by_content(self, content_key: str) -> Job | None:
        row = self._db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE content_key = ? AND state = ? ORDER BY finished_at LIMIT 1",
            (content_key, JobState.DONE.value),
        ).fetchone()
        return None if row is None else _from_row(row)

    def claim_next(self, now: float) -> Job | None:
        with self._transaction():
            row = self._db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE state = ? ORDER BY priority DESC, created_at, rowid LIMIT 1",
                (JobState.QUEUED.value,),
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE jobs SET state = ?, started_at = ?, attempts = attempts + 1 WHERE id = ?",
                (JobState.RUNNING.value, now, row[0]),
            )
        return self.get(row[0])

    def finish(self, job_id: str, now: float, outputs: dict[str, str]) -> None:
        self._db.execute(
            "UPDATE jobs SET state = ?, finished_at = ?, outputs = ?, error = NULL WHERE id = ?",
            (JobState.DONE.value, now, json.dumps(outputs), job_id),
        )

    def fail(self, job_id: str, now: float, error: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ?",
            (JobState.FAILED.value, now, json.dumps(error), job_id),
        )

    def requeue_running(self) -> list[str]:
        with self._transaction():
            ids = [row[0] for row in self._db.execute("SELECT id FROM jobs WHERE state = ?", (JobState.RUNNING.value,))]
            self._db.execute("UPDATE jobs SET state = ?, started_at = NULL WHERE state = ?",
                             (JobState.QUEUED.value, JobState.RUNNING.value))
        return ids

    def get(self, job_id: str) -> Job | None:
        row = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _from_row(row)

    def jobs(self) -> list[Job]:
        """Every job, oldest first (for tests and `vidrop status`)."""
        rows = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs ORDER BY created_at, rowid").fetchall()
        return [_from_row(row) for row in rows]

    def counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in JobState}
        for state, count in self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[state] = count
        return counts

    # -- views for the gallery: added methods, the protocol above is unchanged -------------------

    def folder_jobs(self, folder: str, *, offset: int, limit: int) -> list[Job]:
        """Jobs whose input sits directly in folder ("" for the inbox itself), oldest first, one slice."""
        rows = self._db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE {FOLDER_SQL} = ? ORDER BY created_at, rowid LIMIT ? OFFSET ?",
            (_folder_prefix(folder), limit, offset),
        ).fetchall()
        return [_from_row(row) for row in rows]

    def folder_position(self, folder: str, job_id: str) -> int | None:
        """How many of the folder's jobs came before this one (its place, oldest first), or None."""
        this = self._db.execute("SELECT created_at, rowid FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if this is None:
            return None
        return self._db.execute(
            f"SELECT COUNT(*) FROM jobs WHERE {FOLDER_SQL} = ? AND (created_at, rowid) < (?, ?)",
            (_folder_prefix(folder), this[0], this[1]),
        ).fetchone()[0]

    def folder_summaries(self) -> dict[str, dict[str, Any]]:
        """Per folder ("" for the inbox itself): jobs in each state and the time of the latest activity."""
        summaries: dict[str, dict[str, Any]] = {}
        for prefix, state, count, latest in self._db.execute(
            f"SELECT {FOLDER_SQL} AS folder, state, COUNT(*), "
            "MAX(MAX(created_at, COALESCE(started_at, 0), COALESCE(finished_at, 0))) FROM jobs GROUP BY folder, state"
        ):
            summary = summaries.setdefault(prefix.rstrip("/"), {**{s.value: 0 for s in JobState}, "latest": 0.0})
            summary[state] = count
            summary["latest"] = max(summary["latest"], latest)
        return summaries

    def queued_ids(self) -> list[str]:
        """Ids of queued jobs in the order they will be claimed."""
        return [row[0] for row in self._db.execute(
            "SELECT id FROM jobs WHERE state = ? ORDER BY priority DESC, created_at, rowid", (JobState.QUEUED.value,))]

    def recent_jobs(self, state: JobState, limit: int) -> list[Job]:
        """The latest finished jobs in one state, newest first."""
        rows = self._db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE state = ? ORDER BY finished_at DESC, rowid DESC LIMIT ?",
            (state.value, limit),
        ).fetchall()
        return [_from_row(row) for row in rows]

    def close(self) -> None:
        self._db.close()

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, so two processes never claim the same job."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _folder_prefix(folder: str) -> str:
    return f"{folder.strip('/')}/" if folder.strip("/") else ""


def _to_row(job: Job) -> tuple[Any, ...]:
    return (job.id, job.key, job.state.value, job.input, job.sidecar, job.input_sha256, job.sidecar_sha256,
            json.dumps(job.params), job.seed, job.created_at, job.started_at, job.finished_at, job.attempts,
            json.dumps(job.outputs), None if job.error is None else json.dumps(job.error), job.output, job.priority,
            job.content_key)


def _from_row(row: tuple[Any, ...]) -> Job:
    values = dict(zip(COLUMNS, row))
    return Job(
        id=values["id"], key=values["key"], state=JobState(values["state"]), input=values["input"],
        sidecar=values["sidecar"], input_sha256=values["input_sha256"], sidecar_sha256=values["sidecar_sha256"],
        params=json.loads(values["params"]), seed=values["seed"], created_at=values["created_at"],
        started_at=values["started_at"], finished_at=values["finished_at"], attempts=values["attempts"],
        outputs=json.loads(values["outputs"]), error=None if values["error"] is None else json.loads(values["error"]),
        output=values["output"], priority=values["priority"], content_key=values["content_key"],
    )
