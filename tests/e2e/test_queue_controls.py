"""Queue controls across a fleet: two real `vidrop run` instances on one ledger, steered by the real command line
(`vidrop pause`, `cancel`, `priority`, `resume`, `status --json`)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import drop_job, ledger_jobs, run_vidrop, vidrop_env, wait_for
from vidrop.daemon.ledger.base import JobState

pytestmark = [pytest.mark.e2e, pytest.mark.fleet, pytest.mark.timeout(300)]


def status_json(env: dict[str, str]) -> dict:
    result = run_vidrop(env, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_pause_cancel_priority_and_resume_reach_both_instances(folders, demo_models, start_vidrop):
    env = vidrop_env(folders, demo_models["ltx"])
    fleet = [start_vidrop(env), start_vidrop(env)]
    for instance in fleet:
        instance.wait_event("daemon_ready", timeout=180)

    paused = run_vidrop(env, "pause")
    assert paused.returncode == 0 and paused.stdout.startswith("queue paused by "), paused.stderr
    for instance in fleet:  # each instance reads it from the ledger at its next turn
        [changed] = instance.wait_event("queue_control_changed")
        assert changed["mode"] == "paused" and "@" in changed["changed_by"]

    for name in ("first", "cancelled", "second", "urgent"):  # intake goes on while paused
        drop_job(folders["inbox"], name)
    wait_for(lambda: len(ledger_jobs(folders["state"])) == 4, 60, what="four jobs queued")
    status = status_json(env)
    assert status["queue"]["mode"] == "paused" and status["queue"]["queued"] == 4
    assert status["queue"]["runnable"] == 0 and len(status["instances"]) == 2
    wait_for(lambda: "Held: queue paused by" in (folders["outbox"] / "_STATUS.txt").read_text(), 30, what="_STATUS.txt")

    cancelled = run_vidrop(env, "cancel", str(folders["inbox"] / "cancelled.png"))
    assert cancelled.returncode == 0 and cancelled.stdout.startswith("cancelled cancelled.png"), cancelled.stderr
    error_file = folders["outbox"] / "cancelled.error.json"
    wait_for(error_file.exists, 60, what="the cancelled job's error file (written while paused)")
    error = json.loads(error_file.read_text())
    assert "cancelled by " in error["error"] and "vidrop retry cancelled.png" in error["what_to_do"]

    assert run_vidrop(env, "priority", "urgent.png", "5").stdout.startswith("priority 5: urgent.png")
    assert not any(instance.events_named("generation_started") for instance in fleet)  # paused: nothing started
    assert run_vidrop(env, "resume").returncode == 0

    def states() -> dict[str, JobState]:
        return {job.input: job.state for job in ledger_jobs(folders["state"])}

    wait_for(lambda: list(states().values()).count(JobState.DONE) == 3, 180, what="three jobs done")
    assert states()["cancelled.png"] is JobState.FAILED
    jobs = {job.input: job for job in ledger_jobs(folders["state"])}
    # Two instances take the first two claims: the urgent job (priority 5) and the one queued first (intake may
    # queue the two in either order: the ledger's own order, created_at then id, says which); the other waits.
    older, newer = sorted(("first.png", "second.png"), key=lambda name: (jobs[name].created_at, jobs[name].id))
    assert jobs[newer].started_at > max(jobs["urgent.png"].started_at, jobs[older].started_at)
    finished = [event for instance in fleet for event in instance.events_named("job_finished")]
    assert sorted((event["input"], event["how"]) for event in finished) == [
        ("cancelled.png", "cancelled"),
        ("first.png", "generated"),
        ("second.png", "generated"),
        ("urgent.png", "generated"),
    ]
    for instance in fleet:
        assert [event["mode"] for event in instance.events_named("queue_control_changed")] == ["paused", "running"]
