"""`vidrop validate` says what the intake would; `vidrop submit --wait` drops safely and reports the outcome."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_image, sidecar, vidrop_env
from vidrop.daemon.cli import main

pytestmark = pytest.mark.slow

FIELDS = ("error", "what_to_do", "detail", "kind")


def _vidrop(capfd, *args: str) -> tuple[int, str, str]:
    """validate and submit in this process (its settings from the same VIDROP_* environment as the daemon's)."""
    status = main(list(args))
    out, err = capfd.readouterr()
    return status, out, err


def test_validate_matches_the_daemon_and_submit_waits_for_the_outcome(
    folders, demo_models, start_vidrop, tmp_path, monkeypatch, capfd
):
    env = vidrop_env(folders, demo_models["ltx"])
    for key, value in env.items():
        if key.startswith("VIDROP_"):
            monkeypatch.setenv(key, value)
    sources = tmp_path / "sources"
    (sources / "bad.json").parent.mkdir()
    (sources / "bad.json").write_text(sidecar(colour="red"))
    make_image(sources / "bad.png", color=(10, 20, 30))
    (sources / "good.json").write_text(sidecar(steps=2))
    make_image(sources / "good.png", color=(30, 20, 10))
    (folders["inbox"] / "shots").mkdir()
    (folders["inbox"] / "shots" / "_defaults.json").write_text(json.dumps({"negative_prompt": "blurry"}))

    status, out, err = _vidrop(capfd, "validate", str(sources / "bad.json"), "--to", "shots")
    assert status == 65, err
    told = json.loads(out)
    status, out, err = _vidrop(
        capfd, "validate", str(sources / "good.json"), str(sources / "good.png"), "--to", "shots"
    )
    assert status == 0, err
    (job,) = json.loads(out)["jobs"]
    assert job["parameters"]["negative_prompt"] == "blurry" and job["parameters"]["steps"] == 2  # folder defaults

    vidrop = start_vidrop(env)
    vidrop.wait_event("daemon_ready")
    status, _, err = _vidrop(
        capfd,
        "submit",
        str(sources / "bad.png"),
        "--sidecar",
        str(sources / "bad.json"),
        "--to",
        "shots",
        "--wait",
        "--timeout",
        "120",
    )
    assert status == 65, err
    written = json.loads((folders["outbox"] / "shots" / "bad.error.json").read_text())
    assert {key: written[key] for key in FIELDS} == {key: told[key] for key in FIELDS}
    assert told["error"] in err

    status, out, err = _vidrop(
        capfd,
        "submit",
        str(sources / "good.png"),
        "--sidecar",
        str(sources / "good.json"),
        "--to",
        "shots",
        "--wait",
        "--timeout",
        "120",
    )
    assert status == 0, err
    video = folders["outbox"] / "shots" / "good.mp4"
    assert out.strip().splitlines()[-1] == str(video) and video.exists()
    manifest = json.loads((folders["outbox"] / "shots" / "good.json").read_text())
    assert {k: manifest["parameters"][k] for k in ("prompt", "negative_prompt", "width", "height", "steps")} == {
        k: job["parameters"][k] for k in ("prompt", "negative_prompt", "width", "height", "steps")
    }
    assert vidrop.stop() == 0
