"""Restarts over an inbox the daemon already went through: unchanged inputs are passed over on their stat
alone, changed ones are taken again, and a stop during the catch-up is honoured between two inputs."""

from __future__ import annotations

import os

from structlog.testing import capture_logs

from tests.conftest import make_image, sidecar
from vidrop.config.settings import load_settings
from vidrop.daemon.app import Daemon
from vidrop.daemon.ledger.base import JobState
from vidrop.daemon.ledger.sqlite import SqliteLedger
from vidrop.daemon.wiring import Wiring

INTAKE = {"settle_seconds": 0, "pairing_seconds": 0, "decode_grace_seconds": 0}


def run_once(folders, generator, *, listeners=()) -> tuple[Daemon, list[dict]]:
    settings = load_settings(
        None, inbox=folders["inbox"], outbox=folders["outbox"], state_dir=folders["state"], intake=INTAKE
    ).settings
    daemon = Daemon(Wiring(settings, generator_factory=lambda settings: generator, listeners=listeners))
    with capture_logs() as logs:
        daemon.run(once=True)
    return daemon, logs


def named(logs: list[dict], event: str) -> list[dict]:
    return [entry for entry in logs if entry["event"] == event]


def drop_pair(inbox, name: str, colour: tuple[int, int, int], **fields) -> None:
    make_image(inbox / f"{name}.png", color=colour)
    (inbox / f"{name}.json").write_text(sidecar(**fields))


def jobs(folders):
    ledger = SqliteLedger(folders["state"] / "ledger.sqlite3")
    try:
        return ledger.jobs()
    finally:
        ledger.close()


def test_a_restart_passes_over_what_was_done_takes_a_new_file_and_a_file_changed_in_place(folders, ltx_generator):
    inbox = folders["inbox"]
    drop_pair(inbox / "shoot", "a", (200, 0, 0))
    drop_pair(inbox / "shoot", "b", (0, 200, 0), variants=[{"suffix": "_wide", "width": 96}, {"suffix": "_tall"}])
    (inbox / "shoot" / "text-only.json").write_text(sidecar())  # no image: text to video
    _, logs = run_once(folders, ltx_generator)
    assert len(named(logs, "job_finished")) == len(jobs(folders)) == 4  # a, b's two variants, the text

    # Nothing changed: every input is passed over on stat alone, nothing is admitted, nothing runs.
    drop_pair(inbox / "shoot", "new", (0, 0, 200))
    _, logs = run_once(folders, ltx_generator)
    assert named(logs, "intake_started")[0]["unchanged"] == 3
    assert [entry["input"] for entry in named(logs, "job_queued")] == ["shoot/new.png"]
    assert not named(logs, "input_already_known")

    # a.png replaced in place with other bytes while the daemon was stopped: new work; b's sidecar touched
    # without a change of bytes: looked at again, found known, not run.
    make_image(inbox / "shoot" / "a.png", color=(10, 10, 10))
    os.utime(inbox / "shoot" / "b.json")
    _, logs = run_once(folders, ltx_generator)
    assert named(logs, "intake_started")[0]["unchanged"] == 2
    assert [entry["input"] for entry in named(logs, "job_queued")] == ["shoot/a.png"]
    assert len(named(logs, "job_finished")) == 1
    assert all(job.state is not JobState.QUEUED for job in jobs(folders))

    # Gone from the inbox: forgotten by the next full scan, in memory and in the ledger.
    (inbox / "shoot" / "new.png").unlink()
    (inbox / "shoot" / "new.json").unlink()
    daemon, logs = run_once(folders, ltx_generator)
    assert named(logs, "intake_started")[0]["unchanged"] == 3
    assert "new.png" not in daemon.services.taken.in_folder(str(inbox / "shoot"))
    ledger = SqliteLedger(folders["state"] / "ledger.sqlite3")
    try:
        assert sorted(path for path, _, _ in ledger.taken_inputs()) == [
            "shoot/a.png",
            "shoot/b.png",
            "shoot/text-only.json",
        ]
    finally:
        ledger.close()


class StopOnFirstQueued:
    """A stop request that arrives while intake goes through a batch of new inputs."""

    def __init__(self) -> None:
        self.daemon: Daemon | None = None

    def job_changed(self, job, state, details) -> None:
        if state is JobState.QUEUED and self.daemon is not None:
            self.daemon.request_stop()


def test_a_stop_during_a_batch_of_new_inputs_is_honoured_between_two_of_them(folders, ltx_generator):
    for index in range(4):
        drop_pair(folders["inbox"], f"img{index}", (index * 50, 100, 100))
    stopper = StopOnFirstQueued()
    settings = load_settings(
        None, inbox=folders["inbox"], outbox=folders["outbox"], state_dir=folders["state"], intake=INTAKE
    ).settings
    daemon = Daemon(Wiring(settings, generator_factory=lambda settings: ltx_generator, listeners=[stopper]))
    stopper.daemon = daemon
    with capture_logs() as logs:
        daemon.run()
    assert len(named(logs, "job_queued")) == 1 and not named(logs, "job_started")
    assert named(logs, "intake_interrupted")[0]["not_admitted"] == 3

    # The next start takes the three that were left, and the queued one runs.
    _, logs = run_once(folders, ltx_generator)
    assert len(named(logs, "job_queued")) == 3 and len(named(logs, "job_finished")) == 4
