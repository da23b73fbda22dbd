"""`vidrop validate` says what the intake would; `vidrop submit --wait` drops safely and reports the outcome."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_image, run_vidrop, sidecar, vidrop_env

pytestmark = pytest.mark.slow

FIELDS = ("error", "what_to_do", "detail", "kind")


def test_validate_matches_the_daemon_and_submit_waits_for_the_outcome(folders, demo_models, start_vidrop, tmp_path):
    env = vidrop_env(folders, demo_models["ltx"])
    sources = tmp_path / "sources"
    (sources / "bad.json").parent.mkdir()
    (sources / "bad.json").write_text(sidecar(colour="red"))
    make_image(sources / "bad.png", color=(10, 20, 30))
    (sources / "good.json").write_text(sidecar(steps=2))
    make_image(sources / "good.png", color=(30, 20, 10))
    (folders["inbox"] / "shots").mkdir()
    (folders["inbox"] / "shots" / "_defaults.json").write_text(json.dumps({"negative_prompt": "blurry"}))

    bad = run_vidrop(env, "validate", str(sources / "bad.json"), "--to", "shots")
    assert bad.returncode == 65, bad.stderr
    told = json.loads(bad.stdout)
    good = run_vidrop(env, "validate", str(sources / "good.json"), str(sources / "good.png"), "--to", "shots")
    assert good.returncode == 0, good.stderr
    (job,) = json.loads(good.stdout)["jobs"]
    assert job["parameters"]["negative_prompt"] == "blurry" and job["parameters"]["steps"] == 2  # folder defaults

    vidrop = start_vidrop(env)
    vidrop.wait_event("daemon_ready")
    failed = run_vidrop(
        env, "submit", str(sources / "bad.png"), "--sidecar", str(sources / "bad.json"), "--to", "shots", "--wait"
    )
    assert failed.returncode == 65, failed.stderr
    written = json.loads((folders["outbox"] / "shots" / "bad.error.json").read_text())
    assert {key: written[key] for key in FIELDS} == {key: told[key] for key in FIELDS}
    assert told["error"] in failed.stderr

    done = run_vidrop(
        env, "submit", str(sources / "good.png"), "--sidecar", str(sources / "good.json"), "--to", "shots", "--wait"
    )
    assert done.returncode == 0, done.stderr
    video = folders["outbox"] / "shots" / "good.mp4"
    assert done.stdout.strip().splitlines()[-1] == str(video) and video.exists()
    manifest = json.loads((folders["outbox"] / "shots" / "good.json").read_text())
    assert {k: manifest["parameters"][k] for k in ("prompt", "negative_prompt", "width", "height", "steps")} == {
        k: job["parameters"][k] for k in ("prompt", "negative_prompt", "width", "height", "steps")
    }
    assert vidrop.stop() == 0
