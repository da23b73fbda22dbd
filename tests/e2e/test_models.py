"""Two models on one daemon, picked per sidecar, per folder and per variant, through a real `vidrop once`."""

import json

import pytest

from tests.conftest import make_image, run_vidrop, sidecar, vidrop_env
from tests.e2e.test_run import decode

pytestmark = pytest.mark.e2e


def test_sidecars_folders_and_variants_pick_a_model_and_an_unknown_name_is_refused(folders, demo_models):
    inbox, outbox = folders["inbox"], folders["outbox"]
    make_image(inbox / "hero.png", color=(200, 40, 40))
    (inbox / "hero.json").write_text(sidecar())  # no model: the default (ltx)
    (inbox / "clips").mkdir()
    (inbox / "clips" / "_defaults.json").write_text(json.dumps({"model": "i2v"}))
    make_image(inbox / "clips" / "one.png", color=(40, 200, 40))
    (inbox / "clips" / "one.json").write_text(sidecar())  # the folder's model
    make_image(inbox / "both.png", color=(40, 40, 200))
    (inbox / "both.json").write_text(sidecar(variants=[{"suffix": "_ltx"}, {"suffix": "_i2v", "model": "i2v"}]))
    make_image(inbox / "odd.png", color=(90, 90, 10))
    (inbox / "odd.json").write_text(sidecar(model="sora"))
    (inbox / "idea.json").write_text(sidecar(model="i2v"))  # no image, and i2v cannot start from text

    env = vidrop_env(
        folders,
        "ltx",
        VIDROP_PIPELINE__MODELS=json.dumps({"ltx": str(demo_models["ltx"]), "i2v": str(demo_models["i2vgen-xl"])}),
        VIDROP_MEMORY__MAX_RESIDENT_MODELS="1",
    )
    result = run_vidrop(env, "once", timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]  # two refusals
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]

    expected = {
        "hero": ("ltx", "ltx"),
        "clips/one": ("i2v", "i2vgen-xl"),
        "both_ltx": ("ltx", "ltx"),
        "both_i2v": ("i2v", "i2vgen-xl"),
    }
    for stem, (name, family) in expected.items():
        manifest = json.loads((outbox / f"{stem}.json").read_text())
        assert (manifest["model_name"], manifest["family"]) == (name, family), stem
        assert decode(outbox / f"{stem}.mp4").shape[0] == manifest["parameters"]["num_frames"]

    odd = json.loads((outbox / "odd.error.json").read_text())
    assert "'sora' is not one of the models" in odd["error"]
    assert "ltx, i2v" in odd["what_to_do"] and "ltx, i2v" in odd["detail"]
    idea = json.loads((outbox / "idea.error.json").read_text())
    assert "nothing to animate" in idea["error"]
    assert (inbox / "odd.png").exists() and (inbox / "idea.json").exists()  # inputs are never deleted

    switches = [event for event in events if event["event"] == "model_switched"]
    assert switches and all(event["load_ms"] > 0 for event in switches)  # one model resident at a time
    evictions = [event for event in events if event["event"] == "model_evicted"]
    assert {event["reason"] for event in evictions} == {"too_many_models"} and len(evictions) == len(switches)
    started = [event["model"] for event in events if event["event"] == "job_started"]
    assert sorted(started) == ["i2v", "i2v", "ltx", "ltx"]

    # The folder's page says which model made it (only worth saying when there are several).
    assert "i2v" in (outbox / "clips" / "index.html").read_text()

    # Once more: nothing is done twice.
    again = run_vidrop(env, "once", timeout=300)
    assert again.returncode == 0 and '"job_queued"' not in again.stderr
