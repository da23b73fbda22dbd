"""A full outbox disk, then a share that goes away: jobs wait, the daemon says why, and goes on by itself."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import drop, make_image, run_vidrop, sidecar, vidrop_env, wait_for
from tests.e2e.test_fleet import frames_in
from vidrop.daemon.ledger.base import JobState
from vidrop.daemon.ledger.sqlite import SqliteLedger

pytestmark = pytest.mark.e2e


def mount_tmpfs(path: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], check=True, capture_output=True)


@pytest.fixture
def share(tmp_path):
    """A 2 MiB tmpfs standing in for the outbox's share; always unmounted at the end."""
    if os.getuid() != 0:
        pytest.skip("mounting a tmpfs as the outbox needs root (the CI machines run the tests as root)")
    path = tmp_path / "share"
    path.mkdir()
    mount_tmpfs(path)
    try:
        yield path
    finally:
        while os.path.ismount(path):
            subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill_up(folder: Path) -> Path:
    """Write a file until the disk says it is full."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_then_missing_outbox_pauses_and_resumes(tmp_path, share, demo_models, start_vidrop):
    folders = {"inbox": tmp_path / "inbox", "outbox": share / "outbox", "state": tmp_path / "state"}
    for path in folders.values():
        path.mkdir()
    filler = fill_up(share)
    env = vidrop_env(
        folders,
        demo_models["ltx"],
        VIDROP_RECOVERY__OUTBOX_RETRY_SECONDS="0.3",
        VIDROP_RECOVERY__OUTBOX_RETRY_MAX_SECONDS="1.5",
        VIDROP_RECOVERY__LEASE_SECONDS="3",
    )
    vidrop = start_vidrop(env)
    vidrop.wait_event("daemon_ready")

    # 1. The disk is full: the job is postponed, not failed; the back-off grows; status says why.
    drop(folders["inbox"] / "sea.json", sidecar())
    drop(folders["inbox"] / "sea.png", make_image(tmp_path / "sea.png").read_bytes())
    events = vidrop.wait_event("outbox_unavailable", count=3)
    assert {e["errno"] for e in events} == {"ENOSPC"} and all("full" in e["reason"] for e in events)
    waits = [e["retry_in_seconds"] for e in events]
    assert waits == sorted(waits) and waits[0] < waits[-1]
    ledger = SqliteLedger(folders["state"] / "ledger.sqlite3")
    try:
        (job,) = ledger.jobs()
        assert job.state in (JobState.QUEUED, JobState.RUNNING) and job.error is None
    finally:
        ledger.close()
    assert not (folders["outbox"] / "sea.error.json").exists() and (folders["inbox"] / "sea.png").exists()
    wait_for(lambda: "paused: The outbox is full" in run_vidrop(env, "status").stdout, 60, what="status: paused")

    # 2. Space comes back: the daemon notices by itself and the video appears.
    filler.unlink()
    wait_for(lambda: (folders["outbox"] / "sea.json").exists(), 120, what="the video after space came back")
    assert vidrop.events_named("outbox_available") and frames_in(folders["outbox"] / "sea.mp4") == 9

    # 3. The share goes away: the outbox folder is gone; vidrop waits and never makes one on the local disk.
    subprocess.run(["umount", str(share)], check=True)
    drop(folders["inbox"] / "sky.json", sidecar())
    drop(folders["inbox"] / "sky.png", make_image(tmp_path / "sky.png").read_bytes())
    gone = wait_for(
        lambda: [e for e in vidrop.events_named("outbox_unavailable") if e["errno"] == "ENOENT"],
        90,
        what="the missing share noticed",
    )
    assert "cannot be written" in gone[0]["reason"] and not folders["outbox"].exists()

    # 4. The share is mounted again: the job runs, nothing failed, the daemon never stopped.
    mount_tmpfs(share)
    folders["outbox"].mkdir()
    wait_for(lambda: (folders["outbox"] / "sky.json").exists(), 120, what="the video after the share came back")
    assert frames_in(folders["outbox"] / "sky.mp4") == 9
    assert not [e for e in vidrop.events_named("job_finished") if e["state"] == "failed"]
    manifest = json.loads((folders["outbox"] / "sky.json").read_text())
    assert manifest["state"] == "done" and manifest["attempts"] >= 2
    assert vidrop.stop() == 0
