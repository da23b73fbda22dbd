"""Where jobs live: SQLite in the state directory by default, PostgreSQL for a fleet of hosts."""

from __future__ import annotations

from pathlib import Path

from vidrop.daemon.ledger.sql import SqlLedger
from vidrop.daemon.ledger.sqlite import BUSY_TIMEOUT_SECONDS, SqliteLedger


def open_ledger(ledger_url: str | None, state_dir: Path, *, busy_seconds: float = BUSY_TIMEOUT_SECONDS) -> SqlLedger:
    """The ledger the settings name: `postgresql://…`, `sqlite:///path`, or empty for the state directory's.

    busy_seconds: how long an SQLite statement waits for another process's lock.
    """
    if ledger_url and ledger_url.startswith(("postgresql://", "postgres://")):
        try:
            from vidrop.daemon.ledger.postgres import PostgresLedger
        except ModuleNotFoundError as exc:
            from vidrop.config.errors import ConfigError

            raise ConfigError(
                f"ledger_url is PostgreSQL but {exc.name} is not installed; run: pip install 'vidrop[postgres]'"
            ) from None

        return PostgresLedger(ledger_url)
    if ledger_url and ledger_url.startswith("sqlite:///"):
        return SqliteLedger(Path(ledger_url.removeprefix("sqlite://")), busy_seconds=busy_seconds)
    return SqliteLedger(state_dir / "ledger.sqlite3", busy_seconds=busy_seconds)
