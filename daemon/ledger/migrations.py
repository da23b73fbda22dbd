"""Versioned schema changes, applied in order at start by whichever instance gets there first.

The SQL is written once for SQLite and PostgreSQL: both accept these types and statements.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AddColumn:
    """ALTER TABLE … ADD COLUMN, skipped where the column is already there (ledgers made before versioning)."""

    table: str
    column: str
    definition: str

    @property
    def sql(self) -> str:
        return f"ALTER TABLE {self.table} ADD COLUMN {self.column} {self.definition}"


MIGRATIONS: list[tuple[int, list[str | AddColumn]]] = [
    (
        1,
        [
            # The skeleton's table; IF NOT EXISTS so a ledger made before versioning upgrades in place.
            """CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            input TEXT NOT NULL,
            sidecar TEXT,
            input_sha256 TEXT NOT NULL,
            sidecar_sha256 TEXT,
            params TEXT NOT NULL,
            seed BIGINT,
            created_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            attempts INTEGER NOT NULL DEFAULT 0,
            outputs TEXT NOT NULL DEFAULT '{}',
            error TEXT
        )""",
            "CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, created_at)",
        ],
    ),
    (
        2,
        [
            # Intake's columns: where the outputs go, the queue's priority, and the content key for duplicates.
            AddColumn("jobs", "output", "TEXT NOT NULL DEFAULT ''"),
            AddColumn("jobs", "priority", "INTEGER NOT NULL DEFAULT 0"),
            AddColumn("jobs", "content_key", "TEXT NOT NULL DEFAULT ''"),
            "CREATE INDEX IF NOT EXISTS jobs_content ON jobs (content_key, state)",
            "CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (state, priority, created_at)",
            # Leases and instances: several processes, on one host or many, share the ledger.
            AddColumn("jobs", "lease_owner", "TEXT"),
            AddColumn("jobs", "lease_expires_at", "DOUBLE PRECISION"),
            "CREATE INDEX IF NOT EXISTS jobs_input ON jobs (input)",
            """CREATE TABLE IF NOT EXISTS instances (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            device TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            seen_at DOUBLE PRECISION NOT NULL,
            status TEXT NOT NULL DEFAULT ''
        )""",
        ],
    ),
    (
        3,
        [
            # What intake took, as stat saw it: a restart passes over unchanged files without reading them.
            """CREATE TABLE IF NOT EXISTS inputs (
            path TEXT PRIMARY KEY,
            input_stat TEXT NOT NULL,
            sidecar_stat TEXT,
            job_key TEXT NOT NULL,
            taken_at DOUBLE PRECISION NOT NULL
        )""",
        ],
    ),
    (
        4,
        [
            # Several models on one daemon: the queue prefers jobs for a model that is loaded already.
            AddColumn("jobs", "model", "TEXT NOT NULL DEFAULT ''"),
        ],
    ),
    (
        5,
        [
            # Fencing: every claim counts up, and a holder's writes count only while its count is the job's.
            AddColumn("jobs", "claims", "INTEGER NOT NULL DEFAULT 0"),
            # Claims that took the job from an expired lease: its process died (or stalled) that many times.
            AddColumn("jobs", "lost_attempts", "INTEGER NOT NULL DEFAULT 0"),
        ],
    ),
    (
        6,
        [
            # LoRAs per job: the queue prefers jobs that keep the loaded adapters (their names, sorted, joined).
            AddColumn("jobs", "loras", "TEXT NOT NULL DEFAULT ''"),
        ],
    ),
    (
        7,
        [
            # Queue controls (`vidrop pause/resume/drain`): one row the whole fleet reads before each claim.
            """CREATE TABLE IF NOT EXISTS queue_control (
            id INTEGER PRIMARY KEY,
            mode TEXT NOT NULL,
            changed_by TEXT NOT NULL,
            changed_at DOUBLE PRECISION NOT NULL,
            drain_before DOUBLE PRECISION
        )""",
            "INSERT INTO queue_control (id, mode, changed_by, changed_at) VALUES (1, 'running', '', 0) "
            "ON CONFLICT (id) DO NOTHING",
            # `vidrop cancel`: who asked and when (JSON); a job with one is never claimed to run again.
            AddColumn("jobs", "cancel", "TEXT"),
        ],
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]
