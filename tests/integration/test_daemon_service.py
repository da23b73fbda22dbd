"""The Daemon's service-manager side with a real watcher and the tiny model: watchdog, reload, stop."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from tests.conftest import make_image, sidecar
from tests.fakes import RecordingNotifier
from vidrop.config.settings import load_settings
from vidrop.daemon.app import Daemon
from vidrop.daemon.ledger.sqlite import SqliteLedger
from vidrop.daemon.wiring import Wiring


def settings_for(folders, **overrides):
    return load_settings(
        None, inbox=folders["inbox"], outbox=folders["outbox"], state_dir=folders["state"], **overrides
    ).settings


@pytest.fixture
def daemon(folders, ltx_generator):
    notifier = RecordingNotifier()
    loaded = {"settings": settings_for(folders)}
    daemon = Daemon(
        Wiring(loaded["settings"], generator_factory=lambda settings: ltx_generator, notifier=notifier),
        settings_loader=lambda: loaded["settings"],
    )
    daemon.startup(watch=True)
    yield daemon, notifier, loaded
    daemon.shutdown()


def test_a_reload_applies_live_settings_and_names_the_ones_that_need_a_restart(daemon, folders):
    daemon, notifier, loaded = daemon
    loaded["settings"] = settings_for(
        folders,
        log_level="debug",
        intake={"ignore": ["draft-*"], "settle_seconds": 5},
        limits={"max_steps": 10},
        pipeline={"fit": "pad", "device": "cpu"},
    )
    daemon.request_reload()
    notifier.messages.clear()
    with capture_logs() as logs:
        daemon.run_once(timeout=0.01)
    assert notifier.messages[:1] == ["RELOADING=1"] and "READY=1" in notifier.messages
    reloaded = next(entry for entry in logs if entry["event"] == "settings_reloaded")
    assert reloaded["changed"] == ["intake.ignore", "intake.settle_seconds", "limits.max_steps", "log_level"]
    restart = next(entry for entry in logs if entry["event"] == "settings_need_restart")
    assert restart["settings"] == ["pipeline.device", "pipeline.fit"] and restart["log_level"] == "warning"
    assert daemon.settings.pipeline.fit == "crop" and daemon.settings.intake.ignore == ["draft-*"]
    assert daemon.services.intake.is_junk("draft-1.png") and not daemon.services.intake.is_junk(".hidden.png")
    assert daemon.services.generator.limits.max_steps == 10


def test_a_reload_with_broken_settings_keeps_the_old_ones(daemon):
    daemon, notifier, loaded = daemon

    def broken():
        from vidrop.config.settings import ConfigError

        raise ConfigError("log_level: Input should be 'debug', 'info', 'warning' or 'error' (got 'loud')")

    daemon.settings_loader = broken
    daemon.request_reload()
    notifier.messages.clear()
    with capture_logs() as logs:
        daemon.run_once(timeout=0.01)
    assert [entry["event"] for entry in logs] == ["reload_failed"] and "loud" in logs[0]["error"]
    assert notifier.messages[:2] == ["RELOADING=1", "READY=1"] and daemon.settings.log_level == "info"


class StopWhenRunning:
    """A job listener that asks the daemon to stop as soon as a job starts (a SIGTERM mid-job)."""

    def __init__(self) -> None:
        self.daemon: Daemon | None = None

    def job_changed(self, job, state, details) -> None:
        if state.value == "running":
            self.daemon.request_stop()


@pytest.mark.parametrize("stop_timeout, outcome", [(60, "done"), (0, "queued")])
def test_a_stop_during_a_job_lets_it_finish_within_the_timeout_else_queues_it_again(
    folders, ltx_generator, stop_timeout, outcome
):
    make_image(folders["inbox"] / "photo.png")
    (folders["inbox"] / "photo.json").write_text(sidecar())
    settings = settings_for(
        folders, intake={"settle_seconds": 0, "tick_seconds": 0.05}, service={"stop_timeout_seconds": stop_timeout}
    )
    notifier, listener = RecordingNotifier(), StopWhenRunning()
    daemon = Daemon(
        Wiring(settings, generator_factory=lambda settings: ltx_generator, notifier=notifier, listeners=[listener])
    )
    listener.daemon = daemon
    with capture_logs() as logs:
        assert daemon.run() == 0
    jobs = SqliteLedger(folders["state"] / "ledger.sqlite3").jobs()
    assert [job.state.value for job in jobs] == [outcome]
    assert (folders["outbox"] / "photo.mp4").exists() == (outcome == "done")
    assert ("job_abandoned" in [entry["event"] for entry in logs]) == (outcome == "queued")
    assert notifier.messages.count("STOPPING=1") == 1
    assert ("STATUS=stopping" if outcome == "done" else "STATUS=stopping; photo.png queued again") in notifier.messages
