"""An input across its jobs' lives, through a real `vidrop run`: re-exported, renamed, deleted, retried, or
dropped while another job runs; reused only while its earlier results still belong to its bytes; disposed of
once all its jobs have ended."""

import hashlib
import json
import os
import signal

import numpy as np
import pytest

from tests.conftest import (
    Faults,
    drop,
    job_lines,
    ledger_jobs,
    make_image,
    run_vidrop,
    sidecar,
    vidrop_env,
    wait_for,
)
from tests.e2e.test_run import decode

pytestmark = pytest.mark.e2e

# A job long enough that files dropped or changed meanwhile meet a queue with one job running.
SLOW = Faults(slow_inputs=["slow*", "*/slow*"], slow_step_seconds=2)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_bytes(tmp_path, name: str, color) -> bytes:
    return make_image(tmp_path / "sources" / f"{name}.png", color=color).read_bytes()


def put(folder, name: str, data: bytes, **fields) -> None:
    drop(folder / f"{name}.json", sidecar(**fields))
    drop(folder / f"{name}.png", data)


def settled(folders) -> bool:
    jobs = ledger_jobs(folders["state"])
    return bool(jobs) and all(job.state.value in ("done", "failed") for job in jobs)


def start_busy(start_vidrop, folders, tmp_path, demo_models, **env):
    """A daemon whose first job (slow.png, first by its priority) runs for a while; returns it once it runs."""
    vidrop = start_vidrop(vidrop_env(folders, demo_models["ltx"], **env), faults=SLOW)
    vidrop.wait_event("job_started")
    started = vidrop.events_named("job_started")[0]
    assert started["input"] == "slow.png", started
    return vidrop


def test_a_duplicate_is_made_again_when_the_earlier_results_belong_to_other_bytes(
    folders, demo_models, start_vidrop, tmp_path
):
    inbox, outbox = folders["inbox"], folders["outbox"]
    original, reexport = image_bytes(tmp_path, "a", (200, 40, 40)), image_bytes(tmp_path, "b", (40, 40, 200))
    vidrop = start_vidrop(vidrop_env(folders, demo_models["ltx"]))
    vidrop.wait_event("daemon_ready")
    put(inbox, "logo", original, seed=7)
    wait_for(lambda: len(job_lines(outbox)) == 1, 120, what="the first logo video")
    drop(inbox / "logo.png", reexport)  # re-exported over the first: its video and manifest are replaced
    wait_for(lambda: len(job_lines(outbox)) == 2, 120, what="the re-exported logo video")
    reexported = decode(outbox / "logo.mp4")

    put(inbox, "copy", original, seed=7)  # the first bytes again, under a new name
    wait_for(lambda: len(job_lines(outbox)) == 3, 120, what="the copy's outcome")
    manifest = json.loads((outbox / "copy.json").read_text())
    assert manifest["input"]["sha256"] == sha256(original)
    assert "duplicate_of" not in manifest, manifest.get("duplicate_of")
    assert not np.array_equal(decode(outbox / "copy.mp4"), reexported)

    put(inbox, "again", original, seed=7)  # now copy.png's results are intact: a duplicate of those
    wait_for(lambda: len(job_lines(outbox)) == 4, 120, what="the second copy's outcome")
    again = json.loads((outbox / "again.json").read_text())
    assert again["duplicate_of"]["input"] == "copy.png"
    assert np.array_equal(decode(outbox / "again.mp4"), decode(outbox / "copy.mp4"))


def test_an_image_re_exported_while_queued_is_made_once_from_its_new_bytes(
    folders, demo_models, start_vidrop, tmp_path
):
    inbox, outbox = folders["inbox"], folders["outbox"]
    put(inbox, "slow", image_bytes(tmp_path, "slow", (9, 9, 9)), steps=4, priority=9)
    first, second = image_bytes(tmp_path, "first", (200, 40, 40)), image_bytes(tmp_path, "second", (40, 200, 40))
    put(inbox, "hero", first)
    vidrop = start_busy(start_vidrop, folders, tmp_path, demo_models)
    assert any(job.input == "hero.png" and job.state.value == "queued" for job in ledger_jobs(folders["state"]))

    drop(inbox / "hero.png", second)
    wait_for(lambda: settled(folders) and len(job_lines(outbox)) >= 2, 180, what="every job ended")
    hero_lines = [line for line in job_lines(outbox) if line["input"] == "hero.png"]
    assert [line["state"] for line in hero_lines] == ["done"], hero_lines
    manifest = json.loads((outbox / "hero.json").read_text())
    assert manifest["input"]["sha256"] == sha256(second)
    assert hero_lines[0]["job_id"] == manifest["job_id"]
    hero_jobs = [job for job in ledger_jobs(folders["state"]) if job.input == "hero.png"]
    assert [(job.input_sha256, job.state.value) for job in hero_jobs] == [(sha256(second), "done")]
    assert not (outbox / "hero.error.json").exists()
    superseded = vidrop.events_named("job_superseded")
    assert len(superseded) == 1 and superseded[0]["input_sha256"] == sha256(first)


def test_move_waits_for_every_variant_and_a_refused_one_sends_the_input_to_failed(folders, demo_models, tmp_path):
    inbox, outbox = folders["inbox"], folders["outbox"]
    done, failed = tmp_path / "done", tmp_path / "failed"
    make_image(inbox / "shot.png")
    (inbox / "shot.json").write_text(sidecar(seeds=[1, 2], variants=[{"suffix": "_a"}, {"suffix": "_b"}]))
    make_image(inbox / "mixed.png", color=(10, 200, 10))
    (inbox / "mixed.json").write_text(
        sidecar(variants=[{"suffix": "_huge", "num_frames": 999}, {"suffix": "_ok"}, {"suffix": "_fine"}])
    )
    env = vidrop_env(
        folders,
        demo_models["ltx"],
        VIDROP_INTAKE__ON_SUCCESS="move",
        VIDROP_INTAKE__ON_FAILURE="move",
        VIDROP_INTAKE__DONE_DIR=str(done),
        VIDROP_INTAKE__FAILED_DIR=str(failed),
    )
    result = run_vidrop(env, "once")
    assert result.returncode == 1, result.stderr[-3000:]  # the refused variant
    lines = {(line["input"], line["state"]) for line in job_lines(outbox)}
    states = sorted(line["state"] for line in job_lines(outbox))
    assert states == ["done"] * 6 + ["failed"], job_lines(outbox)
    assert lines == {("shot.png", "done"), ("mixed.png", "done"), ("mixed.png", "failed")}
    for name in ("shot_a_seed1", "shot_a_seed2", "shot_b_seed1", "shot_b_seed2", "mixed_ok", "mixed_fine"):
        assert (outbox / f"{name}.mp4").is_file(), name
    assert "num_frames" in json.loads((outbox / "mixed_huge.error.json").read_text())["error"]
    assert sorted(p.name for p in done.iterdir()) == ["shot.json", "shot.png"]
    assert sorted(p.name for p in failed.iterdir()) == ["mixed.json", "mixed.png"]
    assert not list(inbox.iterdir())


def test_delete_keeps_an_input_that_changed_since_it_was_taken(folders, demo_models, start_vidrop, tmp_path):
    inbox, outbox = folders["inbox"], folders["outbox"]
    put(inbox, "slow", image_bytes(tmp_path, "slow", (9, 9, 9)), steps=4, priority=9)
    vidrop = start_busy(start_vidrop, folders, tmp_path, demo_models, VIDROP_INTAKE__ON_SUCCESS="delete")
    newer = image_bytes(tmp_path, "newer", (90, 90, 200))
    drop(inbox / "slow.png", newer)  # the running job read the old bytes; these must not be deleted with it
    kept = vidrop.wait_event("input_kept", 120)[0]
    assert kept["input"] == "slow.png"
    assert (inbox / "slow.png").read_bytes() == newer or not (inbox / "slow.png").exists()
    wait_for(lambda: settled(folders) and len(job_lines(outbox)) == 2, 180, what="the newer bytes' job")
    assert json.loads((outbox / "slow.json").read_text())["input"]["sha256"] == sha256(newer)


def test_queued_jobs_follow_a_renamed_folder_and_a_deleted_input_ends_removed(
    folders, demo_models, start_vidrop, tmp_path
):
    inbox, outbox = folders["inbox"], folders["outbox"]
    put(inbox, "slow", image_bytes(tmp_path, "slow", (9, 9, 9)), steps=4, priority=9)
    for name, color in (("a", (200, 0, 0)), ("b", (0, 200, 0))):
        put(inbox / "batch", name, image_bytes(tmp_path, name, color))
    gone = image_bytes(tmp_path, "c", (0, 0, 200))
    put(inbox / "gone", "c", gone)
    put(inbox / "loose", "d", image_bytes(tmp_path, "d", (90, 0, 90)))
    (inbox / "archive").mkdir()
    vidrop = start_busy(start_vidrop, folders, tmp_path, demo_models)
    queued = {job.input for job in ledger_jobs(folders["state"]) if job.state.value == "queued"}
    assert queued == {"batch/a.png", "batch/b.png", "gone/c.png", "loose/d.png"}

    os.rename(inbox / "batch", inbox / "batch-final")
    (inbox / "gone" / "c.png").unlink()
    (inbox / "gone" / "c.json").unlink()
    for name in ("d.json", "d.png"):  # moved into another folder: intake queues it there, the old job follows
        os.rename(inbox / "loose" / name, inbox / "archive" / name)
    wait_for(
        lambda: (
            settled(folders)
            and (outbox / "gone" / "c.error.json").exists()
            and len(job_lines(outbox / "batch-final")) == 2
            and job_lines(outbox / "archive")
        ),
        180,
        what="every job ended",
    )
    assert sorted(line["input"] for line in job_lines(outbox / "batch-final")) == [
        "batch-final/a.png",
        "batch-final/b.png",
    ]
    assert {line["state"] for line in job_lines(outbox / "batch-final")} == {"done"}
    assert not (outbox / "batch").exists() or not list((outbox / "batch").glob("*.error.json"))
    error_text = (outbox / "gone" / "c.error.json").read_text()
    error = json.loads(error_text)
    assert "removed" in error["error"] and "before its turn" in error["error"]
    assert "FileNotFoundError" not in error_text and "Traceback" not in error_text
    assert [line["input"] for line in job_lines(outbox / "archive")] == ["archive/d.png"]
    assert not (outbox / "loose").exists() or not list((outbox / "loose").glob("*.error.json"))
    assert len(vidrop.events_named("job_followed")) == 3

    put(inbox / "gone", "c", gone)  # put back: taken again
    wait_for(lambda: (outbox / "gone" / "c.mp4").exists() and settled(folders), 120, what="c.png made after all")
    assert not (outbox / "gone" / "c.error.json").exists()
    assert [line["state"] for line in job_lines(outbox / "gone")] == ["failed", "done"]


def test_retry_re_reads_a_refused_input_in_a_running_daemon(folders, demo_models, start_vidrop, tmp_path):
    inbox, outbox = folders["inbox"], folders["outbox"]
    config = tmp_path / "vidrop.toml"
    config.write_text("[limits]\nmax_image_pixels = 100\n")
    env = {**vidrop_env(folders, demo_models["ltx"]), "VIDROP_CONFIG": str(config)}
    vidrop = start_vidrop(env)
    vidrop.wait_event("daemon_ready")
    put(inbox / "big", "poster", image_bytes(tmp_path, "poster", (120, 30, 30)))
    wait_for(lambda: (outbox / "big" / "poster.error.json").exists(), 120, what="the refusal")
    assert "too large" in json.loads((outbox / "big" / "poster.error.json").read_text())["error"]

    config.write_text("[limits]\nmax_image_pixels = 64000000\n")
    vidrop.process.send_signal(signal.SIGHUP)
    vidrop.wait_event("settings_reloaded")
    retry = run_vidrop(env, "retry", str(inbox / "big" / "poster.png"))
    assert retry.returncode == 0, retry.stderr
    assert "read again: big/poster.png" in retry.stdout and "nothing to re-queue" not in retry.stdout
    wait_for(lambda: (outbox / "big" / "poster.mp4").exists(), 60, what="the retried input's video")
    wait_for(lambda: not (outbox / "big" / "poster.error.json").exists(), 30, what="the error file to go")
    assert [line["state"] for line in job_lines(outbox / "big")] == ["failed", "done"]


def test_files_dropped_while_a_job_runs_are_queued_at_once(folders, demo_models, start_vidrop, tmp_path):
    inbox, outbox = folders["inbox"], folders["outbox"]
    put(inbox, "slow", image_bytes(tmp_path, "slow", (9, 9, 9)), steps=6, priority=9)
    env = vidrop_env(folders, demo_models["ltx"])
    vidrop = start_busy(start_vidrop, folders, tmp_path, demo_models)
    put(inbox / "new", "fresh", image_bytes(tmp_path, "fresh", (1, 120, 1)))
    queued = vidrop.wait_event("job_queued", 60, count=2)[-1]
    assert queued["input"] == "new/fresh.png"
    assert not vidrop.events_named("job_finished"), "the slow job was meant to be running still"
    status = run_vidrop(env, "status")
    assert "1 queued, 1 running" in status.stdout, status.stdout
    page = json.loads(
        wait_for(
            lambda: (outbox / "new" / "_status.json").exists() and (outbox / "new" / "_status.json").read_text(),
            30,
            what="the folder's status",
        )
    )
    assert [(job["state"], job["queue_position"]) for job in page["jobs"]] == [("queued", 1)]
    wait_for(lambda: (outbox / "new" / "fresh.mp4").exists(), 180, what="the dropped file's video")
