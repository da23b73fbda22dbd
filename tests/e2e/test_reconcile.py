"""The next start reconciles ledger and outbox; `vidrop status` and `vidrop retry` read and change the ledger."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_image, run_vidrop, sidecar, vidrop_env
from vidrop.daemon.ledger.base import JobState
from vidrop.daemon.ledger.sqlite import SqliteLedger
from vidrop.daemon.outbox import TEMP_PREFIX

pytestmark = pytest.mark.e2e


def events_of(result) -> list[dict]:
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


def test_outputs_already_in_place_are_recorded_not_made_again(folders, demo_models):
    make_image(folders["inbox"] / "reel" / "cut.png")
    (folders["inbox"] / "reel" / "cut.json").write_text(sidecar())
    env = vidrop_env(folders, demo_models["ltx"], VIDROP_RECOVERY__LEASE_SECONDS="2")
    assert run_vidrop(env, "once").returncode == 0
    out = folders["outbox"] / "reel"
    jobs_log = out / "jobs.jsonl"

    # Rewind to the moment a kill -9 hit after the renames but before the ledger and jobs.jsonl knew:
    # the job is still leased to a dead instance, and half a temporary file of another write lies around.
    ledger = SqliteLedger(folders["state"] / "ledger.sqlite3")
    (job,) = ledger.jobs()
    ledger._execute(
        "UPDATE jobs SET state = 'running', lease_owner = 'gone:1:dead0000', lease_expires_at = 0, "
        "finished_at = NULL WHERE id = ?",
        (job.id,),
    )
    jobs_log.unlink()
    (out / f"{TEMP_PREFIX}dead0000-1234abcd-cut.mp4").write_bytes(b"half a video")
    (folders["outbox"] / f"{TEMP_PREFIX}dead0000-5678abcd-x.error.json").write_bytes(b"{")
    video_before = (out / "cut.mp4").read_bytes()

    result = run_vidrop(env, "once")
    assert result.returncode == 0, result.stderr
    names = [e["event"] for e in events_of(result)]
    assert "job_reconciled" in names and "generation_started" not in names
    assert ledger.get(job.id).state is JobState.DONE and ledger.get(job.id).lease_owner is None
    assert [json.loads(line)["job_id"] for line in jobs_log.read_text().splitlines()] == [job.id]
    assert (out / "cut.mp4").read_bytes() == video_before
    assert not [p for p in folders["outbox"].rglob(f"{TEMP_PREFIX}*")]

    # An operator's view, then a failed job queued again by path.
    ledger.fail(job.id, 1e12, {"error": "The GPU ran out of memory.", "kind": "generation"})
    for name in ("cut.mp4", "cut.jpg", "cut.json"):
        (out / name).unlink()
    status = run_vidrop(env, "status")
    assert status.returncode == 0, status.stderr
    assert "0 queued, 0 running, 0 done, 1 failed" in status.stdout
    assert "reel/cut.png" in status.stdout and "ran out of memory" in status.stdout
    retry = run_vidrop(env, "retry", str(folders["inbox"] / "reel" / "cut.png"))
    assert retry.returncode == 0 and f"queued again: reel/cut.png ({job.id})" in retry.stdout
    again = run_vidrop(env, "once")
    assert again.returncode == 0, again.stderr
    assert [e["event"] for e in events_of(again)].count("generation_started") == 1
    manifest = json.loads((out / "cut.json").read_text())
    assert manifest["job_id"] == job.id and manifest["parameters"]["seed"] == job.seed  # the same seed
    assert "1 done in the last hour" in run_vidrop(env, "status").stdout
    assert run_vidrop(env, "retry", "--failed").stdout.strip() == "nothing to re-queue"
    ledger.close()
