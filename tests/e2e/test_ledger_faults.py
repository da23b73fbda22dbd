"""The ledger's faults: a full state disk, a locked or deleted SQLite file, a PostgreSQL restart or outage, and a
lost or old ledger. The daemon stays up, pauses, says why, goes on by itself, and never makes a video twice."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Faults, drop_job, free_port, job_lines, ledger_jobs, run_vidrop, vidrop_env, wait_for
from tests.e2e.test_fleet import frames_in
from tests.e2e.test_sd_notify import NotifyListener
from vidrop.daemon.ledger.base import JobState

pytestmark = pytest.mark.e2e

FAST_RETRY = {
    "VIDROP_RECOVERY__LEDGER_RETRY_SECONDS": "0.3",
    "VIDROP_RECOVERY__LEDGER_RETRY_MAX_SECONDS": "1.5",
    "VIDROP_RECOVERY__LEASE_SECONDS": "3",
}
SLOW = Faults(slow_inputs=["slow*"], slow_step_seconds=1.5)


@pytest.fixture
def notify(tmp_path):
    listener = NotifyListener(tmp_path / "notify.sock")
    yield listener
    listener.close()


def fill_up(folder: Path) -> Path:
    """Write a file until the disk says it is full."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.fixture
def small_state_disk(tmp_path):
    """A 1 MiB tmpfs as the state folder (where the SQLite ledger lives); always unmounted at the end."""
    if os.getuid() != 0:
        pytest.skip("mounting a tmpfs as the state folder needs root (the CI machines run the tests as root)")
    path = tmp_path / "state-disk"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], check=True, capture_output=True)
    try:
        yield path
    finally:
        while os.path.ismount(path):
            subprocess.run(["umount", "--lazy", str(path)], check=True)


def done_once(vidrop, outbox: Path, name: str) -> None:
    """One video for name, one generation, one done line, and the job done in no other way."""
    assert frames_in(outbox / f"{name}.mp4") == 9
    invoked = [e for e in vidrop.events_named("generation_started") if e.get("input") == f"{name}.png"]
    assert len(invoked) == 1, invoked
    lines = [line for line in job_lines(outbox) if line["input"] == f"{name}.png" and line["state"] == "done"]
    assert len(lines) == 1, lines


def paused_status(notify: NotifyListener) -> list[str]:
    return [status for status in notify.statuses() if "ledger" in status and "paused" in status]


# -- SQLite: a full disk, a lock held too long, a file deleted under the daemon ----------------------------------


def test_a_full_state_disk_pauses_claims_and_resumes(
    tmp_path, folders, small_state_disk, demo_models, start_vidrop, notify
):
    folders["state"] = small_state_disk
    env = vidrop_env(folders, demo_models["ltx"], NOTIFY_SOCKET=str(notify.path), **FAST_RETRY)
    vidrop = start_vidrop(env)
    vidrop.wait_event("daemon_ready")
    drop_job(folders["inbox"], "first")
    wait_for(lambda: (folders["outbox"] / "first.json").exists(), 120, what="the first video")

    filler = fill_up(small_state_disk)
    for index in range(3):  # new rows need new pages: the ledger cannot grow
        drop_job(folders["inbox"], f"second{index}", prompt="x" * 2000)
    events = vidrop.wait_event("ledger_unavailable", timeout=60)
    assert "full" in events[0]["reason"] and events[0]["retry_in_seconds"] > 0
    wait_for(lambda: paused_status(notify), 30, what="STATUS= says the ledger is paused")
    wait_for(lambda: "ledger" in (folders["outbox"] / "_STATUS.txt").read_text(), 30, what="_STATUS.txt says why")
    assert vidrop.process.poll() is None

    filler.unlink()
    vidrop.wait_event("ledger_available", timeout=60)
    for index in range(3):
        wait_for(
            lambda: (folders["outbox"] / f"second{index}.json").exists(), 120, what="the videos after space came back"
        )
        done_once(vidrop, folders["outbox"], f"second{index}")
    assert not [e for e in vidrop.events_named("job_finished") if e["state"] == "failed"]
    assert vidrop.stop() == 0


def test_a_ledger_locked_past_the_busy_timeout_pauses_and_resumes(folders, demo_models, start_vidrop):
    env = vidrop_env(folders, demo_models["ltx"], VIDROP_RECOVERY__LEDGER_BUSY_SECONDS="0.5", **FAST_RETRY)
    vidrop = start_vidrop(env)
    vidrop.wait_event("daemon_ready")
    holder = sqlite3.connect(folders["state"] / "ledger.sqlite3", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock, far longer than the busy timeout
    try:
        drop_job(folders["inbox"], "locked")
        events = vidrop.wait_event("ledger_unavailable", timeout=60)
        assert "locked" in events[0]["reason"] or "busy" in events[0]["reason"]
        assert vidrop.process.poll() is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    vidrop.wait_event("ledger_available", timeout=60)
    wait_for(lambda: (folders["outbox"] / "locked.json").exists(), 120, what="the video after the lock went away")
    done_once(vidrop, folders["outbox"], "locked")
    assert vidrop.stop() == 0


def test_a_ledger_deleted_under_the_daemon_is_made_again_without_redoing_work(folders, demo_models, start_vidrop):
    env = vidrop_env(folders, demo_models["ltx"], **FAST_RETRY)
    vidrop = start_vidrop(env)
    vidrop.wait_event("daemon_ready")
    drop_job(folders["inbox"], "before")
    wait_for(lambda: (folders["outbox"] / "before.json").exists(), 120, what="the first video")
    video = (folders["outbox"] / "before.mp4").read_bytes()

    for path in folders["state"].glob("ledger.sqlite3*"):
        path.unlink()
    events = vidrop.wait_event("ledger_unavailable", timeout=60)
    assert "deleted" in events[0]["reason"]
    vidrop.wait_event("ledger_available", timeout=60)
    drop_job(folders["inbox"], "after")
    wait_for(lambda: (folders["outbox"] / "after.json").exists(), 120, what="a video on the new ledger")
    done_once(vidrop, folders["outbox"], "after")
    # The first input is in the new ledger again, from its manifest: not generated a second time.
    wait_for(
        lambda: {job.input: job.state for job in ledger_jobs(folders["state"])}.get("before.png") is JobState.DONE,
        60,
        what="the first job recorded again from its manifest",
    )
    done_once(vidrop, folders["outbox"], "before")
    assert (folders["outbox"] / "before.mp4").read_bytes() == video
    assert vidrop.stop() == 0


# -- PostgreSQL: restarts, and a 30 s outage while a job runs ----------------------------------------------------


@pytest.fixture
def cluster(postgres_cluster):
    """The throw-away cluster, running again after the test whatever it did to it."""
    yield postgres_cluster
    if not (postgres_cluster.data / "postmaster.pid").exists():
        postgres_cluster.start()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_postgresql_restart_during_a_job_is_survived(mode, folders, demo_models, start_vidrop, cluster, postgres_url):
    env = vidrop_env(folders, demo_models["ltx"], VIDROP_LEDGER_URL=postgres_url, **FAST_RETRY)
    vidrop = start_vidrop(env, faults=SLOW)
    vidrop.wait_event("daemon_ready")
    drop_job(folders["inbox"], "slow-during")
    vidrop.wait_event("generation_started")
    cluster.restart(mode)
    wait_for(lambda: (folders["outbox"] / "slow-during.json").exists(), 120, what="the video made during the restart")
    drop_job(folders["inbox"], "after")  # and the next job runs on a new connection
    wait_for(lambda: (folders["outbox"] / "after.json").exists(), 120, what="a video after the restart")
    done_once(vidrop, folders["outbox"], "slow-during")
    done_once(vidrop, folders["outbox"], "after")
    assert vidrop.process.poll() is None and vidrop.stop() == 0


def test_a_postgresql_outage_of_30_seconds_during_a_job(
    folders, demo_models, start_vidrop, cluster, postgres_url, notify
):
    env = vidrop_env(
        folders, demo_models["ltx"], VIDROP_LEDGER_URL=postgres_url, NOTIFY_SOCKET=str(notify.path), **FAST_RETRY
    )
    vidrop = start_vidrop(env, faults=SLOW)
    vidrop.wait_event("daemon_ready")
    drop_job(folders["inbox"], "slow-outage")
    vidrop.wait_event("generation_started")
    cluster.stop("fast")
    stopped = time.monotonic()
    drop_job(folders["inbox"], "during")  # admitted once the database is back, not refused
    # The job's generation ends during the outage; its commit waits (the lease expires meanwhile).
    wait_for(
        lambda: time.monotonic() - stopped >= 30 and vidrop.events_named("ledger_unavailable"),
        60,
        what="30 s of outage, seen by the daemon",
    )
    assert vidrop.process.poll() is None and paused_status(notify)
    assert not (folders["outbox"] / "during.json").exists()
    cluster.start()
    vidrop.wait_event("ledger_available", timeout=60)
    wait_for(lambda: (folders["outbox"] / "during.json").exists(), 120, what="the input dropped during the outage")
    done_once(vidrop, folders["outbox"], "slow-outage")
    done_once(vidrop, folders["outbox"], "during")
    assert vidrop.stop() == 0


def test_a_database_down_at_start_is_waited_for(folders, demo_models, start_vidrop, cluster, postgres_url):
    cluster.stop("fast")
    vidrop = start_vidrop(vidrop_env(folders, demo_models["ltx"], VIDROP_LEDGER_URL=postgres_url, **FAST_RETRY))
    vidrop.wait_event("ledger_unavailable", count=2, timeout=60)
    assert vidrop.process.poll() is None and not vidrop.events_named("daemon_starting")
    cluster.start()
    vidrop.wait_event("daemon_ready", timeout=120)
    drop_job(folders["inbox"], "late")
    wait_for(lambda: (folders["outbox"] / "late.json").exists(), 120, what="a video once the database was up")
    done_once(vidrop, folders["outbox"], "late")
    assert vidrop.stop() == 0


def test_vidrop_status_on_a_database_out_of_reach_says_so_in_one_line(folders, demo_models):
    url = f"postgresql://vidrop@127.0.0.1:{free_port()}/vidrop"  # nothing listens there
    completed = run_vidrop(vidrop_env(folders, demo_models["ltx"], VIDROP_LEDGER_URL=url), "status", timeout=60)
    assert completed.returncode == 75 and "Traceback" not in completed.stderr
    assert "The ledger database cannot be reached" in completed.stderr.strip().splitlines()[-1]


# -- A lost ledger, or an old one: the outbox's manifests count --------------------------------------------------


def _invocations(completed: subprocess.CompletedProcess) -> list[dict]:
    events = [json.loads(line) for line in completed.stderr.splitlines() if line.startswith("{")]
    return [e for e in events if e.get("event") in ("generation_started", "job_reconciled")]


@pytest.mark.parametrize("loss", ["deleted", "old backup"])
def test_a_lost_or_old_ledger_does_not_redo_work_in_the_outbox(loss, folders, demo_models):
    env = vidrop_env(folders, demo_models["ltx"])
    ledger = folders["state"] / "ledger.sqlite3"
    assert run_vidrop(env, "once").returncode == 0  # an empty ledger: the backup taken before the job
    backup = shutil.copy(ledger, folders["state"].parent / "backup.sqlite3")
    drop_job(folders["inbox"], "photo")
    first = run_vidrop(env, "once")
    assert first.returncode == 0 and [e["event"] for e in _invocations(first)] == ["generation_started"]
    outputs = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in folders["outbox"].glob("photo*")}

    for path in folders["state"].glob("ledger.sqlite3*"):
        path.unlink()
    if loss == "old backup":
        shutil.copy(backup, ledger)
    again = run_vidrop(env, "once")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [e["event"] for e in _invocations(again)] == ["job_reconciled"]
    assert {
        path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in folders["outbox"].glob("photo*")
    } == outputs
    assert [job.state for job in ledger_jobs(folders["state"])] == [JobState.DONE]
    assert len([line for line in job_lines(folders["outbox"]) if line["state"] == "done"]) == 1
