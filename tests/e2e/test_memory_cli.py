"""Memory as an operator meets it: `vidrop check`, and a real `vidrop once` that cannot get enough memory."""

import json

from tests.conftest import drop, make_image, run_vidrop, sidecar, vidrop_env


def test_check_prints_free_memory_and_the_default_jobs_estimate_and_mode(folders, demo_models):
    result = run_vidrop(vidrop_env(folders, demo_models["ltx"]), "check")
    assert result.returncode == 0, result.stdout
    lines = [line for line in result.stdout.splitlines() if " memory: " in line]
    assert lines[0].startswith("ok   memory: cpu, ") and " GB free of " in lines[0]
    assert "default job 704x480, 121 frames (ltx, float32): needs about" in lines[1] and "mode as_is" in lines[1]


def test_a_job_that_never_gets_enough_memory_fails_clearly_and_the_input_stays(folders, demo_models):
    inbox = folders["inbox"]
    make_image(inbox / "hero.png")
    drop(inbox / "hero.json", sidecar())
    env = vidrop_env(
        folders,
        demo_models["ltx"],
        VIDROP_MEMORY__RESERVE_GB="1000000",
        VIDROP_MEMORY__MAX_WAIT_SECONDS="0.5",
        VIDROP_MEMORY__WAIT_POLL_SECONDS="0.1",
    )
    result = run_vidrop(env, "once")
    assert result.returncode == 1
    error = json.loads((folders["outbox"] / "hero.error.json").read_text())
    assert error["error"].startswith("There was not enough free memory for this video after waiting")
    assert "1000000.0 GB reserve" in error["detail"] and "64x64, 9 frames" in error["detail"]
    assert "memory.reserve_gb, now 1000000.0" in error["what_to_do"]
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(event["event"] == "memory_wait" and event["waiting_for_bytes"] > 10**15 for event in events)
    assert (inbox / "hero.png").exists() and (inbox / "hero.json").exists()
