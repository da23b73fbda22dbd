"""The ledger's SQL, shared by the SQLite and PostgreSQL backends; each backend brings its connection."""

from __future__ import annotations

import json
import threading
from contextlib import AbstractContextManager
from typing import Any, Iterator, Sequence

from vidrop.config.request import lora_set
from vidrop.daemon.ledger.base import (
    Instance,
    Job,
    JobState,
    LedgerStatus,
    LedgerUnavailable,
    QueueControl,
    QueueMode,
    RunningJob,
    TakenInput,
)
from vidrop.daemon.ledger.migrations import MIGRATIONS, AddColumn
from vidrop.daemon.names import from_ledger_text, ledger_text

COLUMNS = (
    "id",
    "key",
    "state",
    "input",
    "sidecar",
    "input_sha256",
    "sidecar_sha256",
    "params",
    "seed",
    "created_at",
    "started_at",
    "finished_at",
    "attempts",
    "outputs",
    "error",
    "output",
    "priority",
    "content_key",
    "lease_owner",
    "lease_expires_at",
    "claims",
    "lost_attempts",
    "cancel",
)
SELECT_JOBS = f"SELECT {', '.join(COLUMNS)} FROM jobs"
# Written, not read back: the model's name (also in params) as a column, for the claim's ORDER BY.
STORED_COLUMNS = (*COLUMNS, "model", "loras")
INSERT_JOB = (
    f"INSERT INTO jobs ({', '.join(STORED_COLUMNS)}) VALUES ({', '.join('?' * len(STORED_COLUMNS))}) "
    "ON CONFLICT (key) DO NOTHING"
)
INSTANCE_COLUMNS = ("id", "host", "pid", "device", "started_at", "seen_at", "status")
RECENT_FAILURES = 10
TAKEN_PAGE = 5000  # remembered inputs read per query at start
FORGET_CHUNK = 500  # paths per DELETE
HOUR = 3600.0
FORGET_INSTANCES_AFTER = 24 * HOUR  # an instance silent this long is gone from `vidrop status`


class SqlLedger:
    """Jobs and instances in SQL tables; every change is one statement or one transaction.

    A lock serialises use of the one connection: the heartbeat thread renews leases on it too.
    """

    #: appended to the claim's SELECT (PostgreSQL: FOR UPDATE SKIP LOCKED)
    claim_lock = ""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.migrate()

    # -- what a backend provides ---------------------------------------------------------------

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement (placeholders written `?`) and return a cursor."""
        raise NotImplementedError

    def _execute_many(self, sql: str, rows: list[Sequence[Any]]) -> None:
        """Run one statement for each row (inside a transaction)."""
        for row in rows:
            self._execute(sql, row)

    def _transaction(self) -> AbstractContextManager[None]:
        """One write transaction that excludes other writers' claims."""
        raise NotImplementedError

    def _lock_schema(self) -> None:
        """Inside the migration transaction: keep other instances out until it commits."""

    def _has_column(self, table: str, column: str) -> bool:
        """Whether a table already has a column."""
        raise NotImplementedError

    def take_lost(self) -> LedgerUnavailable | None:
        return None  # a database server keeps what it knows; only a SQLite file can vanish

    def close(self) -> None:
        raise NotImplementedError

    # -- schema --------------------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Apply the migrations this ledger lacks, in order; return their versions."""
        applied = []
        with self._lock, self._transaction():
            self._lock_schema()
            self._execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    if isinstance(statement, AddColumn):
                        if not self._has_column(statement.table, statement.column):
                            self._execute(statement.sql)
                    else:
                        self._execute(statement)
                self._execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                applied.append(version)
        return applied

    def schema_version(self) -> int:
        with self._lock:
            return self._execute("SELECT MAX(version) FROM schema_version").fetchone()[0]

    # -- jobs ----------------------------------------------------------------------------------

    def enqueue(self, job: Job) -> bool:
        with self._lock:
            cursor = self._execute(INSERT_JOB, _to_row(job))
            return cursor.rowcount == 1

    def has_key(self, key: str) -> bool:
        with self._lock:
            return self._execute("SELECT 1 FROM jobs WHERE key = ?", (key,)).fetchone() is not None

    def done_by_content(self, content_key: str, limit: int = 5) -> list[Job]:
        with self._lock:
            rows = self._execute(
                f"{SELECT_JOBS} WHERE content_key = ? AND state = ? ORDER BY finished_at DESC, id LIMIT {int(limit)}",
                (content_key, JobState.DONE.value),
            ).fetchall()
        return [_from_row(row) for row in rows]

    def jobs_by_content(self, content_key: str, limit: int = 20) -> list[Job]:
        if not content_key:  # refusals have none
            return []
        with self._lock:
            rows = self._execute(
                f"{SELECT_JOBS} WHERE content_key = ? ORDER BY created_at DESC, id LIMIT {int(limit)}", (content_key,)
            ).fetchall()
        return [_from_row(row) for row in rows]

    def move_job(self, job_id: str, *, key: str, input: str, sidecar: str | None, output: str) -> bool:
        # One transaction: intake may have queued the new path as a job of its own; that one gives way
        # (this one keeps its place), unless it has started or ended, in which case this one goes.
        with self._lock, self._transaction():
            self._execute(
                "DELETE FROM jobs WHERE key = ? AND state = ? AND id <> ?", (key, JobState.QUEUED.value, job_id)
            )
            if self._execute("SELECT 1 FROM jobs WHERE key = ? AND id <> ?", (key, job_id)).fetchone() is not None:
                self._execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                return False
            self._execute(
                "UPDATE jobs SET key = ?, input = ?, sidecar = ?, output = ? WHERE id = ?",
                (key, input, sidecar, output, job_id),
            )
            return True

    def requeued_refusals(self) -> list[Job]:
        with self._lock:
            rows = self._execute(
                f"{SELECT_JOBS} WHERE state = ? AND params = ? ORDER BY created_at, id", (JobState.QUEUED.value, "{}")
            ).fetchall()
        return [_from_row(row) for row in rows]

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def remember_inputs(self, inputs: list[TakenInput]) -> None:
        with self._lock, self._transaction():
            self._execute_many(
                "INSERT INTO inputs (path, input_stat, sidecar_stat, job_key, taken_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET input_stat = excluded.input_stat, "
                "sidecar_stat = excluded.sidecar_stat, job_key = excluded.job_key, taken_at = excluded.taken_at",
                [(ledger_text(i.path), i.input_stat, i.sidecar_stat, i.job_key, i.taken_at) for i in inputs],
            )

    def taken_inputs(self) -> Iterator[tuple[str, str, str | None]]:
        # Page by path, the lock held per page only: the heartbeat thread shares the connection.
        after = ""
        while True:
            with self._lock:
                rows = self._execute(
                    "SELECT i.path, i.input_stat, i.sidecar_stat FROM inputs i JOIN jobs j ON j.key = i.job_key "
                    f"WHERE i.path > ? ORDER BY i.path LIMIT {TAKEN_PAGE}",
                    (after,),
                ).fetchall()
            yield from ((from_ledger_text(path), *stats) for path, *stats in rows)
            if len(rows) < TAKEN_PAGE:
                return
            after = rows[-1][0]

    def forget_inputs(self, paths: list[str]) -> None:
        with self._lock, self._transaction():
            for start in range(0, len(paths), FORGET_CHUNK):
                chunk = [ledger_text(path) for path in paths[start : start + FORGET_CHUNK]]
                self._execute(f"DELETE FROM inputs WHERE path IN ({', '.join('?' * len(chunk))})", chunk)

    def queued_count(self) -> int:
        with self._lock:
            return self._execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (JobState.QUEUED.value,)).fetchone()[0]

    def claim_next(
        self,
        owner: str,
        now: float,
        lease_seconds: float,
        *,
        prefer_models: Sequence[str] = (),
        patience_seconds: float = 0.0,
        prefer_loras: Sequence[str] = (),
    ) -> Job | None:
        # Highest priority first. Within a priority: jobs that waited longer than patience_seconds, oldest
        # first; then jobs for a preferred (loaded) model, those keeping its loaded LoRAs first; then the rest.
        preferred = ", ".join("?" * len(prefer_models))
        keeps = f"WHEN model IN ({preferred}) AND loras IN ({', '.join('?' * len(prefer_loras))}) THEN 1 "
        rank = (
            f"CASE WHEN created_at <= ? THEN 0 {keeps if prefer_loras else ''}"
            f"WHEN model IN ({preferred}) THEN 2 ELSE 3 END, "
            if prefer_models
            else ""
        )
        lora_params = (*prefer_models, *prefer_loras) if prefer_loras else ()
        rank_params = (now - patience_seconds, *lora_params, *prefer_models) if prefer_models else ()
        with self._lock:
            with self._transaction():
                # The fleet's queue control, read in the claim's own transaction: paused, nothing starts;
                # draining, only what was queued before the drain. A cancelled job never starts again.
                allowed, allowed_params = _allowed_by(self.control())
                row = self._execute(
                    f"{SELECT_JOBS} WHERE (state = ? OR (state = ? AND lease_expires_at < ?)) AND cancel IS NULL "
                    f"AND {allowed} ORDER BY priority DESC, {rank}created_at, id LIMIT 1{self.claim_lock}",
                    (JobState.QUEUED.value, JobState.RUNNING.value, now, *allowed_params, *rank_params),
                ).fetchone()
                if row is None:
                    return None
                # Still running under an expired lease: the attempt before this one died or stalled.
                lost = 1 if row[COLUMNS.index("state")] == JobState.RUNNING.value else 0
                self._execute(
                    "UPDATE jobs SET state = ?, started_at = ?, attempts = attempts + 1, claims = claims + 1, "
                    "lost_attempts = lost_attempts + ?, lease_owner = ?, lease_expires_at = ? WHERE id = ?",
                    (JobState.RUNNING.value, now, lost, owner, now + lease_seconds, row[0]),
                )
            return self.get(row[0])

    # -- queue controls (`vidrop pause`, `drain`, `resume`, `cancel`, `priority`) ----------------

    def control(self) -> QueueControl:
        with self._lock:
            row = self._execute(
                "SELECT mode, changed_by, changed_at, drain_before FROM queue_control WHERE id = 1"
            ).fetchone()
        if row is None:
            return QueueControl()
        return QueueControl(QueueMode(row[0]), row[1], row[2], row[3])

    def set_control(self, mode: QueueMode, *, by: str, now: float) -> QueueControl:
        drain_before = now if mode is QueueMode.DRAINING else None
        with self._lock:
            self._execute(
                "UPDATE queue_control SET mode = ?, changed_by = ?, changed_at = ?, drain_before = ? WHERE id = 1",
                (mode.value, by, now, drain_before),
            )
        return self.control()

    def runnable_count(self) -> int:
        allowed, params = _allowed_by(self.control())
        with self._lock:
            return self._execute(
                f"SELECT COUNT(*) FROM jobs WHERE state = ? AND (cancel IS NOT NULL OR {allowed})",
                (JobState.QUEUED.value, *params),
            ).fetchone()[0]

    def request_cancel(self, job_ids: Sequence[str], request: dict[str, Any]) -> list[Job]:
        if not job_ids:
            return []
        where = (
            f"id IN ({', '.join('?' * len(job_ids))}) AND state IN (?, ?) AND cancel IS NULL",
            (*job_ids, JobState.QUEUED.value, JobState.RUNNING.value),
        )
        with self._lock, self._transaction():
            rows = self._execute(f"{SELECT_JOBS} WHERE {where[0]} ORDER BY created_at, id", where[1]).fetchall()
            self._execute(f"UPDATE jobs SET cancel = ? WHERE {where[0]}", (json.dumps(request), *where[1]))
        return [_from_row(row) for row in rows]

    def cancel_request(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._execute("SELECT cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None or row[0] is None else json.loads(row[0])

    def claim_cancelled(self, owner: str, now: float, lease_seconds: float) -> Job | None:
        with self._lock:
            with self._transaction():
                row = self._execute(
                    "SELECT id FROM jobs WHERE cancel IS NOT NULL "
                    "AND (state = ? OR (state = ? AND lease_expires_at < ?)) "
                    f"ORDER BY created_at, id LIMIT 1{self.claim_lock}",
                    (JobState.QUEUED.value, JobState.RUNNING.value, now),
                ).fetchone()
                if row is None:
                    return None
                self._execute(
                    "UPDATE jobs SET state = ?, claims = claims + 1, lease_owner = ?, lease_expires_at = ? "
                    "WHERE id = ?",
                    (JobState.RUNNING.value, owner, now + lease_seconds, row[0]),
                )
            return self.get(row[0])

    def set_priority(self, job_ids: Sequence[str], priority: int) -> list[Job]:
        if not job_ids:
            return []
        marks = ", ".join("?" * len(job_ids))
        with self._lock, self._transaction():
            self._execute(
                f"UPDATE jobs SET priority = ? WHERE id IN ({marks}) AND state = ?",
                (int(priority), *job_ids, JobState.QUEUED.value),
            )
            rows = self._execute(
                f"{SELECT_JOBS} WHERE id IN ({marks}) AND state = ? AND priority = ? ORDER BY created_at, id",
                (*job_ids, JobState.QUEUED.value, int(priority)),
            ).fetchall()
        return [_from_row(row) for row in rows]

    def renew(self, job_id: str, owner: str, now: float, lease_seconds: float, token: int | None = None) -> bool:
        where, params = _held_by(job_id, owner, token)
        with self._lock:
            cursor = self._execute(
                f"UPDATE jobs SET lease_expires_at = ? WHERE {where}", (now + lease_seconds, *params)
            )
            return cursor.rowcount == 1

    def release(self, job_id: str, owner: str, token: int | None = None) -> bool:
        where, params = _held_by(job_id, owner, token)
        with self._lock:
            cursor = self._execute(
                "UPDATE jobs SET state = ?, started_at = NULL, lease_owner = NULL, lease_expires_at = NULL "
                f"WHERE {where}",
                (JobState.QUEUED.value, *params),
            )
            return cursor.rowcount == 1

    def finish(
        self, job_id: str, now: float, outputs: dict[str, str], owner: str | None = None, token: int | None = None
    ) -> bool:
        return self._close_job(
            job_id,
            owner,
            token,
            "state = ?, finished_at = ?, outputs = ?, error = NULL",
            (JobState.DONE.value, now, json.dumps(outputs)),
        )

    def fail(
        self, job_id: str, now: float, error: dict[str, Any], owner: str | None = None, token: int | None = None
    ) -> bool:
        return self._close_job(
            job_id,
            owner,
            token,
            "state = ?, finished_at = ?, error = ?",
            (JobState.FAILED.value, now, json.dumps(error)),
        )

    def _close_job(
        self, job_id: str, owner: str | None, token: int | None, assignments: str, values: tuple[Any, ...]
    ) -> bool:
        where, params = ("id = ?", (job_id,)) if owner is None else _held_by(job_id, owner, token)
        with self._lock:
            cursor = self._execute(
                f"UPDATE jobs SET {assignments}, lease_owner = NULL, lease_expires_at = NULL WHERE {where}",
                (*values, *params),
            )
            return cursor.rowcount == 1

    def requeue(self, *, inputs: list[str] | None = None, failed: bool = False) -> list[Job]:
        if inputs is None and not failed:
            return []
        where, params = "state = ?", [JobState.FAILED.value]
        if inputs is not None:
            where += f" AND input IN ({', '.join('?' * len(inputs))})"
            params += [ledger_text(path) for path in inputs]
        with self._lock:
            with self._transaction():
                rows = self._execute(f"{SELECT_JOBS} WHERE {where} ORDER BY created_at, id", params).fetchall()
                self._execute(
                    "UPDATE jobs SET state = ?, finished_at = NULL, error = NULL, attempts = 0, lost_attempts = 0, "
                    f"cancel = NULL WHERE {where}",
                    (JobState.QUEUED.value, *params),
                )
        return [_from_row(row) for row in rows]

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._execute(f"{SELECT_JOBS} WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _from_row(row)

    def jobs(self) -> list[Job]:
        with self._lock:
            rows = self._execute(f"{SELECT_JOBS} ORDER BY created_at, id").fetchall()
        return [_from_row(row) for row in rows]

    def jobs_for_input(self, relative_input: str) -> list[Job]:
        with self._lock:
            rows = self._execute(
                f"{SELECT_JOBS} WHERE input = ? ORDER BY created_at, id", (ledger_text(relative_input),)
            ).fetchall()
        return [_from_row(row) for row in rows]

    def counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in JobState}
        with self._lock:
            for state, count in self._execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall():
                counts[state] = count
        return counts

    # -- instances -----------------------------------------------------------------------------

    def register(self, instance: Instance) -> None:
        with self._lock:
            self._execute("DELETE FROM instances WHERE seen_at < ?", (instance.started_at - FORGET_INSTANCES_AFTER,))
            self._execute(
                f"INSERT INTO instances ({', '.join(INSTANCE_COLUMNS)}) VALUES ({', '.join('?' * 7)})",
                (
                    instance.id,
                    instance.host,
                    instance.pid,
                    instance.device,
                    instance.started_at,
                    instance.seen_at or instance.started_at,
                    instance.status,
                ),
            )

    def seen(self, instance_id: str, now: float, status: str) -> bool:
        with self._lock:
            cursor = self._execute(
                "UPDATE instances SET seen_at = ?, status = ? WHERE id = ?", (now, status, instance_id)
            )
            return cursor.rowcount == 1

    def unregister(self, instance_id: str) -> None:
        with self._lock:
            self._execute("DELETE FROM instances WHERE id = ?", (instance_id,))

    def status(self, now: float) -> LedgerStatus:
        with self._lock:
            instances = [
                Instance(*row)
                for row in self._execute(
                    f"SELECT {', '.join(INSTANCE_COLUMNS)} FROM instances ORDER BY host, started_at"
                ).fetchall()
            ]
            running = [
                _from_row(row)
                for row in self._execute(
                    f"{SELECT_JOBS} WHERE state = ? ORDER BY started_at", (JobState.RUNNING.value,)
                ).fetchall()
            ]
            failures = [
                _from_row(row)
                for row in self._execute(
                    f"{SELECT_JOBS} WHERE state = ? ORDER BY finished_at DESC LIMIT {RECENT_FAILURES}",
                    (JobState.FAILED.value,),
                ).fetchall()
            ]
            done = self._execute(
                "SELECT COUNT(*) FROM jobs WHERE state = ? AND finished_at >= ?", (JobState.DONE.value, now - HOUR)
            ).fetchone()[0]
        by_id = {instance.id: instance for instance in instances}
        return LedgerStatus(
            counts=self.counts(),
            instances=instances,
            running=[RunningJob(job, by_id.get(job.lease_owner or "")) for job in running],
            recent_failures=failures,
            done_last_hour=done,
            control=self.control(),
            runnable=self.runnable_count(),
        )


def _allowed_by(control: QueueControl) -> tuple[str, tuple[Any, ...]]:
    """SQL for the queued jobs the queue control lets start: all, none (paused), those before the drain."""
    if control.mode is QueueMode.PAUSED:
        return "1 = 0", ()
    if control.mode is QueueMode.DRAINING:
        return "created_at <= ?", (control.drain_before or 0.0,)
    return "1 = 1", ()


def _held_by(job_id: str, owner: str, token: int | None) -> tuple[str, tuple[Any, ...]]:
    """WHERE the job runs under owner's lease (and, with a token, under that very claim)."""
    where, params = "id = ? AND state = ? AND lease_owner = ?", (job_id, JobState.RUNNING.value, owner)
    if token is not None:
        where, params = f"{where} AND claims = ?", (*params, token)
    return where, params


def _to_row(job: Job) -> tuple[Any, ...]:
    # Paths go in as ledger_text: a name's undecodable bytes are no valid text for SQLite or PostgreSQL.
    return (
        job.id,
        job.key,
        job.state.value,
        ledger_text(job.input),
        None if job.sidecar is None else ledger_text(job.sidecar),
        job.input_sha256,
        job.sidecar_sha256,
        json.dumps(job.params),
        job.seed,
        job.created_at,
        job.started_at,
        job.finished_at,
        job.attempts,
        json.dumps(job.outputs),
        None if job.error is None else json.dumps(job.error),
        ledger_text(job.output),
        job.priority,
        job.content_key,
        job.lease_owner,
        job.lease_expires_at,
        job.claims,
        job.lost_attempts,
        None if job.cancel is None else json.dumps(job.cancel),
        job.params.get("model", ""),
        lora_set(job.params.get("loras") or ()),
    )


def _from_row(row: Sequence[Any]) -> Job:
    values = dict(zip(COLUMNS, row))
    return Job(
        id=values["id"],
        key=values["key"],
        state=JobState(values["state"]),
        input=from_ledger_text(values["input"]),
        sidecar=None if values["sidecar"] is None else from_ledger_text(values["sidecar"]),
        input_sha256=values["input_sha256"],
        sidecar_sha256=values["sidecar_sha256"],
        params=json.loads(values["params"]),
        seed=values["seed"],
        created_at=values["created_at"],
        started_at=values["started_at"],
        finished_at=values["finished_at"],
        attempts=values["attempts"],
        outputs=json.loads(values["outputs"]),
        error=None if values["error"] is None else json.loads(values["error"]),
        output=from_ledger_text(values["output"]),
        priority=values["priority"],
        content_key=values["content_key"],
        lease_owner=values["lease_owner"],
        lease_expires_at=values["lease_expires_at"],
        claims=values["claims"],
        lost_attempts=values["lost_attempts"],
        cancel=None if values["cancel"] is None else json.loads(values["cancel"]),
    )
