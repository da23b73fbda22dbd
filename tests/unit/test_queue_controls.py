"""The queue controls with the daemon's loop and fakes (no model, a temporary SQLite ledger): a paused queue starts
nothing, a cancel reaches a queued job (its error file) and a running one (abandoned between two steps), and the
command-line side says what it did in one line."""

from __future__ import annotations

import json

from structlog.testing import capture_logs

from tests.conftest import drop_job, job_lines
from tests.fakes import FakeGenerator, RecordingNotifier, fake_daemon, quick_settings
from vidrop.daemon import controls
from vidrop.daemon.ledger.base import JobState, QueueMode
from vidrop.daemon.ledger.sqlite import SqliteLedger

SMALL = {"width": 64, "height": 64, "num_frames": 9, "steps": 4}


def operator_ledger(folders) -> SqliteLedger:
    """A second connection to the daemon's ledger, as `vidrop pause` or `vidrop cancel` opens it."""
    return SqliteLedger(folders["state"] / "ledger.sqlite3")


def finished(logs):
    return [event for event in logs if event["event"] == "job_finished"]


def test_a_paused_queue_starts_nothing_records_a_cancel_and_runs_again_once_resumed(folders, capsys):
    ledger = operator_ledger(folders)
    print(controls.set_mode(ledger, "pause", now=100.0))
    assert capsys.readouterr().out.startswith("queue paused by ")
    drop_job(folders["inbox"], "hero", **SMALL)
    drop_job(folders["inbox"], "other", **SMALL)
    generator, notifier = FakeGenerator(), RecordingNotifier()
    with capture_logs() as logs:
        assert fake_daemon(quick_settings(folders), generator, notifier=notifier).run(once=True) == 0
    assert generator.generated == [] and ledger.counts()["queued"] == 2  # intake went on; nothing started
    assert any(message.startswith("STATUS=queue paused by ") for message in notifier.messages)
    assert [event["mode"] for event in logs if event["event"] == "queue_control_changed"] == ["paused"]

    assert controls.cancel(ledger, "hero.png", folders["inbox"], now=200.0) == 0
    assert "cancelled hero.png" in capsys.readouterr().out
    with capture_logs() as logs:  # still paused: the cancellation is recorded all the same
        fake_daemon(quick_settings(folders), generator).run(once=True)
    [event] = finished(logs)
    assert (event["input"], event["state"], event["how"], event["kind"]) == (
        "hero.png",
        "failed",
        "cancelled",
        "cancelled",
    )
    error = json.loads((folders["outbox"] / "hero.error.json").read_text())
    assert error["state"] == "failed" and "cancelled by " in error["error"] and "@" in error["error"]
    assert "vidrop retry hero.png" in error["what_to_do"]
    assert [line["state"] for line in job_lines(folders["outbox"])] == ["failed"]

    controls.set_mode(ledger, "resume", now=300.0)
    with capture_logs() as logs:
        fake_daemon(quick_settings(folders), generator).run(once=True)
    assert [event["input"] for event in finished(logs)] == ["other.png"] and len(generator.generated) == 1
    assert {job.input: job.state for job in ledger.jobs()} == {"hero.png": JobState.FAILED, "other.png": JobState.DONE}
    ledger.close()


def test_a_running_job_cancelled_is_abandoned_between_two_steps_with_the_same_event_fields(folders, capsys):
    ledger = operator_ledger(folders)
    asked = []  # once: at the running job's second step

    def cancel_at_step_two(params, step):
        if step == 2 and not asked:
            asked.append(controls.cancel(ledger, "hero.png", folders["inbox"], now=100.0))

    drop_job(folders["inbox"], "hero", **SMALL)
    drop_job(folders["inbox"], "next", **SMALL)
    generator = FakeGenerator(on_step=cancel_at_step_two)
    with capture_logs() as logs:
        assert fake_daemon(quick_settings(folders), generator).run(once=True) == 1  # a job failed: cancelled
    assert asked == [0] and "cancelling hero.png" in capsys.readouterr().out
    events = {event["input"]: event for event in finished(logs)}
    assert events["hero.png"]["how"] == "cancelled" and events["next.png"]["how"] == "generated"
    assert events["hero.png"].keys() == events["next.png"].keys()
    seen = [event for event in logs if event["event"] == "job_cancel_seen"]
    assert [(event["step"], event["total"]) for event in seen] == [(2, 4)]
    error = json.loads((folders["outbox"] / "hero.error.json").read_text())
    assert "abandoned after step 2 of 4" in error["detail"] and not (folders["outbox"] / "hero.mp4").exists()
    requeued = ledger.requeue(inputs=["hero.png"])  # `vidrop retry hero.png`
    assert [job.input for job in requeued] == ["hero.png"] and ledger.get(requeued[0].id).cancel is None
    ledger.close()


def test_the_command_line_side_names_unknown_targets_and_reports_the_queue_for_scripts(folders, capsys):
    ledger = operator_ledger(folders)
    assert controls.cancel(ledger, "nope.png", folders["inbox"], now=1.0) == controls.EX_NOT_FOUND
    assert controls.priority(ledger, "0123456789abcdef", 3, folders["inbox"]) == controls.EX_NOT_FOUND
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and errors[0].startswith("vidrop cancel: no job for nope.png")
    ledger.set_control(QueueMode.DRAINING, by="ana@box", now=50.0)
    status = ledger.status(now=60.0)
    document = controls.status_document(status, now=60.0, lease_seconds=30.0)
    assert document["queue"]["mode"] == "draining" and document["queue"]["changed_by"] == "ana@box"
    assert set(document) == {"queue", "done_last_hour", "instances", "running", "recent_failures"}
    assert {"runnable", "queued", "running", "done", "failed", "drain_before"} <= set(document["queue"])
    json.dumps(document)  # plain JSON
    ledger.close()


def test_the_metrics_say_whether_the_fleets_queue_is_paused_or_draining():
    from vidrop.daemon.ledger.base import QueueControl
    from vidrop.daemon.metrics import Metrics

    control = [QueueControl()]
    metrics = Metrics(families=("ltx",), counts=lambda: {})
    metrics.watch_queue(lambda: control[0])
    assert b"vidrop_queue_paused 0.0" in metrics.render() and b"vidrop_queue_draining 0.0" in metrics.render()
    control[0] = QueueControl(QueueMode.DRAINING, "ana@box", 5.0, 5.0)
    assert b"vidrop_queue_paused 0.0" in metrics.render() and b"vidrop_queue_draining 1.0" in metrics.render()
