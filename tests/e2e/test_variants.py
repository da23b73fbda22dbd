"""Variants, seeds, presets and a prompt alone on one LTX model, through a real `vidrop once`."""

import json

import numpy as np
import pytest

from tests.conftest import make_image, run_vidrop, sidecar, vidrop_env
from tests.e2e.test_run import decode

pytestmark = pytest.mark.e2e


def test_variants_seeds_presets_and_text_to_video(folders, demo_models):
    inbox, outbox = folders["inbox"], folders["outbox"]
    make_image(inbox / "shot.png")
    (inbox / "shot.json").write_text(
        sidecar(
            seeds=[1, 2],
            variants=[
                {"suffix": "_calm", "prompt_add": "moving slowly"},
                {"suffix": "_huge", "num_frames": 999},  # beyond LTX's limit: these two fail, the others run
            ],
        )
    )
    make_image(inbox / "quick.png")
    (inbox / "quick.json").write_text(sidecar(preset="fast"))  # explicit tiny sizes win over the preset
    (inbox / "idea.json").write_text(sidecar(prompt="a blue circle"))  # no image: LTX makes it from text

    result = run_vidrop(vidrop_env(folders, demo_models["ltx"]), "once")
    assert result.returncode == 1, result.stderr[-3000:]

    calm = {seed: json.loads((outbox / f"shot_calm_seed{seed}.json").read_text()) for seed in (1, 2)}
    for seed, manifest in calm.items():
        assert manifest["parameters"]["seed"] == seed and manifest["variant"] == f"_calm_seed{seed}"
        assert manifest["parameters"]["prompt"] == "a small red square, moving slowly"
        assert manifest["outputs"]["video"] == f"shot_calm_seed{seed}.mp4"
    assert calm[1]["job_id"] != calm[2]["job_id"]
    assert not np.array_equal(decode(outbox / "shot_calm_seed1.mp4"), decode(outbox / "shot_calm_seed2.mp4"))
    for seed in (1, 2):
        error = json.loads((outbox / f"shot_huge_seed{seed}.error.json").read_text())
        assert "num_frames" in error["error"] and error["state"] == "failed"
    assert not (outbox / "shot.mp4").exists() and not (outbox / "shot.error.json").exists()
    states = sorted(
        (line["state"], line["input"])
        for line in map(json.loads, (outbox / "jobs.jsonl").open())
        if line["input"] == "shot.png"
    )
    assert states == [("done", "shot.png")] * 2 + [("failed", "shot.png")] * 2

    quick = json.loads((outbox / "quick.json").read_text())["parameters"]
    assert quick["preset"] == "fast" and (quick["steps"], quick["width"], quick["num_frames"]) == (2, 64, 9)

    idea = json.loads((outbox / "idea.json").read_text())
    assert idea["parameters"]["mode"] == "text" and idea["input"]["path"] == "idea.json"
    assert decode(outbox / "idea.mp4").shape == (9, 64, 64, 3)

    # Run again: every variant is its own known job, nothing is redone.
    again = run_vidrop(vidrop_env(folders, demo_models["ltx"]), "once")
    assert again.returncode == 0 and '"job_queued"' not in again.stderr
