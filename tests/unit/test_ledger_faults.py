"""The ledger's faults, piece by piece: which errors mean "wait", a file deleted or replaced under an open ledger,
a connection the server closed, the back-off, and a job's outcome recorded once across an outage."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from tests.fakes import FakeClock
from vidrop.daemon.lease import LeaseLost
from vidrop.daemon.ledger.base import Job, JobState, LedgerUnavailable
from vidrop.daemon.ledger.sqlite import SqliteLedger
from vidrop.daemon.ledger_pause import LedgerPause
from vidrop.daemon.outbox import Outbox
from vidrop.daemon.recorder import Recorder


def job(key: str) -> Job:
    return Job(
        id=key[:16],
        key=key,
        input=f"{key}.png",
        sidecar=None,
        input_sha256="a" * 64,
        sidecar_sha256=None,
        params={"prompt": "x"},
        seed=1,
        created_at=1.0,
    )


@pytest.fixture
def ledger(tmp_path):
    opened = SqliteLedger(tmp_path / "ledger.sqlite3", busy_seconds=0.2)
    yield opened
    opened.close()


def test_a_lock_held_past_the_busy_timeout_is_unavailable_then_gone(ledger, tmp_path):
    holder = sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(LedgerUnavailable) as caught:
        ledger.enqueue(job("k1"))
    assert "locked" in caught.value.reason
    holder.execute("ROLLBACK")
    holder.close()
    assert ledger.enqueue(job("k1")) and ledger.counts()["queued"] == 1


def test_a_deleted_ledger_is_noticed_and_made_anew_at_the_same_path(ledger, tmp_path):
    ledger.enqueue(job("k1"))
    for path in tmp_path.glob("ledger.sqlite3*"):
        path.unlink()
    with pytest.raises(LedgerUnavailable) as caught:
        ledger.queued_count()  # the open file still answers; the ledger must not keep writing into it
    assert "deleted" in caught.value.reason
    assert ledger.enqueue(job("k2")) and [j.key for j in ledger.jobs()] == ["k2"]
    assert (tmp_path / "ledger.sqlite3").exists()


def test_a_ledger_replaced_by_a_copy_is_opened_anew(ledger, tmp_path):
    ledger.enqueue(job("old"))
    backup = tmp_path / "backup.sqlite3"
    copy = sqlite3.connect(backup)
    sqlite3.connect(tmp_path / "ledger.sqlite3").backup(copy)
    copy.close()
    ledger.enqueue(job("new"))
    shutil.move(backup, tmp_path / "ledger.sqlite3")
    with pytest.raises(LedgerUnavailable) as caught:
        ledger.jobs()
    assert "replaced" in caught.value.reason
    assert [j.key for j in ledger.jobs()] == ["old"]


def test_other_sqlite_errors_stay_what_they_are(ledger):
    with pytest.raises(sqlite3.OperationalError):
        ledger._execute("SELECT * FROM no_such_table")


def test_a_connection_the_server_closed_is_replaced_unnoticed(postgres_url):
    import psycopg

    from vidrop.daemon.ledger.postgres import PostgresLedger

    ledger = PostgresLedger(postgres_url)
    try:
        ledger.enqueue(job("k1"))
        with psycopg.connect(postgres_url, autocommit=True) as admin:  # what a restart does to every connection
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'vidrop'")
        assert ledger.queued_count() == 1  # the pool checked the connection, found it dead, made another
    finally:
        ledger.close()


def test_the_pause_backs_off_says_why_and_ends_when_the_probe_works():
    clock, failures = FakeClock(), [LedgerUnavailable("The state disk is full.", detail="d", fix="f")] * 3

    def probe():
        if failures:
            raise failures.pop()

    pause = LedgerPause(probe, clock=clock, first_wait=1.0, longest_wait=3.0)
    assert pause.pause(failures.pop()) == 1.0 and pause.is_paused and "full" in pause.describe()
    assert not pause.try_again()  # not due yet: no probe
    waits = []
    while not pause.try_again():
        waits.append(pause.wait)
        clock.now += pause.wait
    assert waits == [1.0, 2.0, 3.0] and not pause.is_paused and pause.outages == 1


class FlakyLedger:
    """A real ledger whose chosen methods fail as an unreachable one does, a given number of times."""

    def __init__(self, ledger: SqliteLedger, **failures: int) -> None:
        self._ledger, self.failures = ledger, failures

    def __getattr__(self, name):
        method = getattr(self._ledger, name)

        def call(*args, **kwargs):
            if self.failures.get(name, 0) > 0:
                self.failures[name] -= 1
                raise LedgerUnavailable("The ledger database cannot be reached.", detail="down", fix="wait")
            return method(*args, **kwargs)

        return call


def recorder_for(ledger, tmp_path, clock) -> Recorder:
    pause = LedgerPause(lambda: None, clock=clock, first_wait=0.1, longest_wait=0.1)
    return Recorder(
        ledger=ledger,
        outbox=Outbox(tmp_path / "outbox"),
        clock=clock,
        owner="a",
        ledger_pause=pause,
        wait=lambda seconds: False,
    )


def test_an_outcome_waits_for_the_ledger_and_is_recorded_once(ledger, tmp_path):
    ledger.enqueue(job("k1"))
    claimed = ledger.claim_next("a", now=100.0, lease_seconds=3.0)
    flaky, lines = FlakyLedger(ledger, get=2, finish=1), []
    recorder = recorder_for(flaky, tmp_path, FakeClock())
    recorder._record(
        claimed,
        JobState.DONE,
        lambda: lines.append("done"),
        lambda: flaky.finish(claimed.id, 101.0, {"video": "v"}, owner="a"),
    )
    assert lines == ["done"] and ledger.get(claimed.id).state is JobState.DONE
    assert not recorder.ledger_pause.is_paused and recorder.ledger_pause.outages == 1


def test_an_answer_lost_with_the_connection_is_not_recorded_twice(ledger, tmp_path):
    ledger.enqueue(job("k1"))
    claimed = ledger.claim_next("a", now=100.0, lease_seconds=3.0)
    lines, tries = [], []

    def finish_then_lose_the_answer():
        tries.append(ledger.finish(claimed.id, 101.0, {"video": "v"}, owner="a"))
        if len(tries) == 1:
            raise LedgerUnavailable("The ledger database cannot be reached.", detail="reset", fix="wait")

    recorder_for(ledger, tmp_path, FakeClock())._record(
        claimed, JobState.DONE, lambda: lines.append("done"), finish_then_lose_the_answer
    )
    assert lines == ["done"] and tries == [True]


def test_a_job_taken_over_during_the_outage_is_not_recorded_by_its_old_holder(ledger, tmp_path):
    ledger.enqueue(job("k1"))
    claimed = ledger.claim_next("a", now=100.0, lease_seconds=3.0)
    # The lease ran out while "a" could not reach the ledger; "b" took the job over.
    assert ledger.claim_next("b", now=110.0, lease_seconds=3.0).lease_owner == "b"
    flaky, lines = FlakyLedger(ledger, get=1), []
    with pytest.raises(LeaseLost):
        recorder_for(flaky, tmp_path, FakeClock())._record(
            claimed,
            JobState.DONE,
            lambda: lines.append("done"),
            lambda: ledger.finish(claimed.id, 111.0, {"video": "v"}, owner="a"),
        )
    assert lines == [] and ledger.get(claimed.id).lease_owner == "b"


def test_status_txt_says_why_nothing_moves_without_reading_the_ledger(ledger, tmp_path):
    from vidrop.daemon.gallery.writer import STATUS_TEXT, GalleryWriter

    (tmp_path / "outbox").mkdir()
    gallery = GalleryWriter(
        ledger=FlakyLedger(ledger, folder_summaries=99, recent_jobs=99, queued_ids=99),
        outbox=tmp_path / "outbox",
        clock=FakeClock(),
    )
    gallery.show_notice("ledger unavailable: The state disk (where the ledger lives) is full.")
    text = (tmp_path / "outbox" / STATUS_TEXT).read_text()
    assert "Paused: ledger unavailable: The state disk" in text and "Queue: 0 waiting" in text
