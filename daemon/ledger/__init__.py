"""Where jobs live: SQLite in the state directory by default, PostgreSQL for a fleet of hosts."""

from __future__ import annotations

from pathlib import Path

from daemon.ledger.sql import SqlLedger


def open_ledger(ledger_url: str | None, state_dir: Path) -> SqlLedger:
    """The ledger the settings name: `postgresql://…`, `sqlite:///path`, or empty for the state directory's."""
    if ledger_url and ledger_url.startswith(("postgresql://", "postgres://")):
        from daemon.ledger.postgres import PostgresLedger

        return PostgresLedger(ledger_url)
    from daemon.ledger.sqlite import SqliteLedger

    if ledger_url and ledger_url.startswith("sqlite:///"):
        return SqliteLedger(Path(ledger_url.removeprefix("sqlite://")))
    return SqliteLedger(state_dir / "ledger.sqlite3")
