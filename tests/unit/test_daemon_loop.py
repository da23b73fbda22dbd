"""The daemon's loop with fakes: no model, a temporary SQLite ledger, frames made at once. Each story runs in a
fraction of a second: a job done, failed, refused, reused as a duplicate, queued again on stop, a reload, and a
second stop request."""

from __future__ import annotations

import contextlib
import json

import pytest
from structlog.testing import capture_logs

from tests.conftest import drop, drop_job, job_lines, make_image
from tests.fakes import FakeGenerator, RecordingNotifier, fake_daemon, quick_settings
from vidrop.config.errors import GenerationError
from vidrop.daemon.ledger.base import JobState, LedgerUnavailable
from vidrop.daemon.ledger.sqlite import SqliteLedger

SMALL = {"width": 64, "height": 64, "num_frames": 9, "steps": 4}


def finished(logs):
    return [event for event in logs if event["event"] == "job_finished"]


def ledger_states(folders):
    ledger = SqliteLedger(folders["state"] / "ledger.sqlite3")
    try:
        return {job.input: job.state for job in ledger.jobs()}
    finally:
        ledger.close()


def test_a_job_is_made_recorded_once_and_told_to_systemd(folders):
    drop_job(folders["inbox"], "hero", **SMALL, seed=3)
    generator, notifier = FakeGenerator(), RecordingNotifier()
    with capture_logs() as logs:
        assert fake_daemon(quick_settings(folders), generator, notifier=notifier).run(once=True) == 0
    assert [seed for _, seed in generator.generated] == [3]
    manifest = json.loads((folders["outbox"] / "hero.json").read_text())
    assert manifest["state"] == "done" and manifest["video"]["frames"] == 9
    assert set(manifest["versions"]) == {"vidrop", "diffusers", "torch"} and manifest["versions"]["vidrop"]
    assert [line["state"] for line in job_lines(folders["outbox"])] == ["done"]
    [event] = finished(logs)
    assert event["state"] == "done" and event["how"] == "generated" and event["output"].endswith("hero.mp4")
    assert ledger_states(folders) == {"hero.png": JobState.DONE}
    assert notifier.messages.index("READY=1") < notifier.messages.index("STATUS=job 1 of 1: hero.png, step 4/4")


def test_a_failing_job_and_a_refused_input_get_error_files_with_the_same_event_fields(folders):
    def fail(params, step):
        if params.prompt == "explode":
            raise GenerationError("The model gave up.", detail="injected", fix="Try again.")

    drop_job(folders["inbox"], "boom", **SMALL, prompt="explode")
    make_image(folders["inbox"] / "bad.png")
    drop(folders["inbox"] / "bad.json", '{"prompt": ')
    with capture_logs() as logs:
        assert fake_daemon(quick_settings(folders), FakeGenerator(on_step=fail)).run(once=True) == 1
    events = {event["input"]: event for event in finished(logs)}
    assert events["boom.png"]["how"] == "failed" and events["boom.png"]["error"] == "The model gave up."
    assert events["bad.png"]["how"] == "refused" and "not valid JSON" in events["bad.png"]["error"]
    assert events["boom.png"].keys() == events["bad.png"].keys()
    assert json.loads((folders["outbox"] / "boom.error.json").read_text())["detail"] == "injected"
    assert (folders["outbox"] / "bad.error.json").exists()
    assert ledger_states(folders) == {"boom.png": JobState.FAILED, "bad.png": JobState.FAILED}


def test_a_duplicate_under_another_name_is_copied_not_made_again(folders):
    drop_job(folders["inbox"], "hero", **SMALL, seed=5)
    generator = FakeGenerator()
    with capture_logs() as first:
        assert fake_daemon(quick_settings(folders), generator).run(once=True) == 0
    (folders["inbox"] / "copy.png").write_bytes((folders["inbox"] / "hero.png").read_bytes())
    (folders["inbox"] / "copy.json").write_bytes((folders["inbox"] / "hero.json").read_bytes())
    with capture_logs() as logs:
        assert fake_daemon(quick_settings(folders), generator).run(once=True) == 0
    assert len(generator.generated) == 1
    [event] = finished(logs)
    assert event["how"] == "duplicate" and event["input"] == "copy.png"
    assert event.keys() == finished(first)[0].keys()  # one event, the same fields, whatever the outcome
    assert (folders["outbox"] / "copy.mp4").read_bytes() == (folders["outbox"] / "hero.mp4").read_bytes()
    assert job_lines(folders["outbox"])[1]["duplicate_of"] == job_lines(folders["outbox"])[0]["job_id"]


class StopWhenRunning:
    """A listener that asks the daemon to stop as soon as a job runs (a SIGTERM mid-job)."""

    daemon = None

    def job_changed(self, job, state, details) -> None:
        if state is JobState.RUNNING:
            self.daemon.request_stop()


@pytest.mark.parametrize(
    "stop_timeout, second_request, outcome",
    [
        (60, False, JobState.DONE),  # the job ends within the stop timeout
        (0, False, JobState.QUEUED),  # past the timeout: abandoned at the next step, queued again
        (60, True, JobState.QUEUED),  # a second request: at once
    ],
)
def test_a_stop_during_a_job_finishes_it_or_queues_it_again(folders, stop_timeout, second_request, outcome):
    listener = StopWhenRunning()

    def again(params, step):
        if second_request and step == 2:
            listener.daemon.request_stop()

    drop_job(folders["inbox"], "hero", **SMALL)
    generator = FakeGenerator(on_step=again)
    settings = quick_settings(folders, service={"stop_timeout_seconds": stop_timeout})
    daemon = listener.daemon = fake_daemon(settings, generator, listeners=(listener,))
    with capture_logs() as logs:
        daemon.run()
    assert ledger_states(folders) == {"hero.png": outcome}
    abandoned = [event for event in logs if event["event"] == "job_abandoned"]
    assert bool(abandoned) is (outcome is JobState.QUEUED)
    assert len(generator.generated) == (1 if outcome is JobState.DONE else 0)
    if abandoned:
        assert abandoned[0]["reason"] == "stopping" and not (folders["outbox"] / "hero.mp4").exists()


def test_a_reload_hands_the_live_settings_to_each_service(folders):
    generator, notifier = FakeGenerator(), RecordingNotifier()
    loaded = {"settings": quick_settings(folders)}
    daemon = fake_daemon(loaded["settings"], generator, notifier=notifier, settings_loader=lambda: loaded["settings"])
    daemon.startup(watch=False)
    try:
        loaded["settings"] = quick_settings(
            folders, limits={"max_steps": 3, "max_image_pixels": 10_000}, intake={"ignore": ["draft-*"]}
        )
        daemon.request_reload()
        with capture_logs() as logs:
            daemon.run_once(timeout=0.01)
        [reloaded] = [event for event in logs if event["event"] == "settings_reloaded"]
        assert reloaded["changed"] == ["intake.ignore", "limits.max_image_pixels", "limits.max_steps"]
        assert generator.rules.limits.max_steps == 3 and daemon.services.runner.max_image_pixels == 10_000
        assert daemon.services.intake.is_junk("draft-1.png")
        drop_job(folders["inbox"], "long", **{**SMALL, "steps": 8})
        daemon.services.intake.scan_now()
        with capture_logs() as logs:
            daemon.run_once(timeout=0.01)
        [event] = finished(logs)
        assert event["how"] == "refused" and "steps" in event["detail"]
        assert notifier.messages.count("RELOADING=1") == 1
    finally:
        daemon.shutdown()


def _a_gallery_write(daemon):  # a listener's failure is logged (job_listener_failed), never raised
    with contextlib.suppress(LedgerUnavailable):
        daemon.services.ledger.folder_summaries()


@pytest.mark.parametrize(
    "first_to_notice",
    [lambda daemon: daemon.services.keeper.beat_once(), _a_gallery_write],
    ids=["the heartbeat", "a gallery write"],
)
def test_a_ledger_deleted_under_another_caller_pauses_the_loop_and_is_rebuilt(folders, first_to_notice):
    """Another caller (the heartbeat thread, the gallery writing after a job) is often the first to touch a
    deleted ledger: the loop must still hear of it, say so, and record what the outbox holds in the new file
    (else the new ledger silently forgets the done job)."""
    settings = quick_settings(folders, recovery={"ledger_retry_seconds": 0.01})
    daemon = fake_daemon(settings, FakeGenerator())
    daemon.startup(watch=False)
    try:
        drop_job(folders["inbox"], "before", **SMALL)
        daemon.services.intake.scan_now()
        daemon.run_once(timeout=0.01)
        assert ledger_states(folders) == {"before.png": JobState.DONE}
        for path in folders["state"].glob("ledger.sqlite3*"):
            path.unlink()
        with capture_logs() as logs:
            first_to_notice(daemon)
            for _ in range(50):
                daemon.run_once(timeout=0.01)
                if any(event["event"] == "ledger_available" for event in logs):
                    break
            daemon.run_once(timeout=0.01)
        [unavailable] = [event for event in logs if event["event"] == "ledger_unavailable"]
        assert "deleted" in unavailable["reason"]
        assert ledger_states(folders) == {"before.png": JobState.DONE}
    finally:
        daemon.shutdown()
