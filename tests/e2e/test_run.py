"""A real `vidrop run` process on a temporary inbox: drop files, get videos, decode them."""

import json
import shutil

import imageio_ffmpeg
import numpy as np
from PIL import Image

from tests.conftest import TINY, drop, make_image, run_vidrop, sidecar, vidrop_env, wait_for


def decode(path):
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return np.stack([np.frombuffer(frame, np.uint8).reshape(height, width, 3) for frame in reader])


def test_drop_an_image_and_a_prompt_get_a_video(folders, demo_models, start_vidrop, tmp_path):
    env = vidrop_env(folders, demo_models["ltx"])
    vidrop = start_vidrop(env)
    vidrop.wait_event("daemon_ready")

    # A designer exports into a sub-folder: the sidecar first, then the image (copied, not renamed).
    source = make_image(tmp_path / "export" / "photo.png", size=(120, 80))
    drop(folders["inbox"] / "acme" / "spring" / "photo.json", sidecar(num_frames=16))
    shutil.copy(source, folders["inbox"] / "acme" / "spring" / "photo.png")

    out = folders["outbox"] / "acme" / "spring"
    wait_for(lambda: (out / "photo.json").exists(), 120, what="the manifest")
    video = decode(out / "photo.mp4")
    assert video.shape == (17, 64, 64, 3)  # 16 frames asked, LTX makes 8k+1: 17, and the manifest says why
    manifest = json.loads((out / "photo.json").read_text())
    assert manifest["state"] == "done" and manifest["family"] == "ltx" and manifest["device"] == "cpu"
    assert manifest["adjustments"] == [
        {"field": "num_frames", "requested": 16, "used": 17, "rule": "ltx needs 8k+1 frames (9, 17, 25, ...)"}
    ]
    assert manifest["input"]["path"] == "acme/spring/photo.png" and len(manifest["input"]["sha256"]) == 64
    assert manifest["seed_was_random"] is True and isinstance(manifest["parameters"]["seed"], int)
    assert manifest["video"] == {"frames": 17, "width": 64, "height": 64, "fps": 8, "format": "mp4"}
    assert manifest["memory"]["mode"] == "as_is" and manifest["memory"]["recovery"] == []
    assert manifest["memory"]["estimated_bytes"] > 0 and manifest["memory"]["after_job"]["rss_bytes"] > 0
    assert manifest["speed"]["levers"]["cache"] == "off" and manifest["speed"]["denoiser_calls"] > 0
    with Image.open(out / "photo.jpg") as thumbnail:
        assert thumbnail.format == "JPEG" and thumbnail.size == (64, 64)
    line = json.loads((out / "jobs.jsonl").read_text().splitlines()[-1])
    assert (
        line["state"] == "done" and line["input"] == "acme/spring/photo.png" and line["outputs"]["video"] == "photo.mp4"
    )
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    # The log tells the story, with the job id from the first event to the last.
    job_id = manifest["job_id"]
    story = [e["event"] for e in vidrop.events if e.get("job_id") == job_id]
    assert story[0] == "job_queued" and story[-1] == "job_finished"
    assert vidrop.stop() == 0

    # The recorded seed reproduces the same frames.
    again = {name: tmp_path / "again" / name for name in ("inbox", "outbox", "state")}
    for path in again.values():
        path.mkdir(parents=True)
    shutil.copy(source, again["inbox"] / "photo.png")
    (again["inbox"] / "photo.json").write_text(sidecar(num_frames=17, seed=manifest["parameters"]["seed"]))
    result = run_vidrop(vidrop_env(again, demo_models["ltx"]), "once")
    assert result.returncode == 0, result.stderr
    assert np.array_equal(decode(again["outbox"] / "photo.mp4"), video)


def test_bad_inputs_get_error_files_and_the_daemon_goes_on(folders, demo_models, start_vidrop):
    inbox, outbox = folders["inbox"], folders["outbox"]
    vidrop = start_vidrop(vidrop_env(folders, demo_models["ltx"]))
    vidrop.wait_event("daemon_ready")

    drop(inbox / "broken.json", '{"prompt": "waves",')
    drop(inbox / "broken.png", make_image(inbox.parent / "b.png").read_bytes())
    drop(inbox / "fake.json", sidecar())
    drop(inbox / "fake.png", b"this is a text file with an image name")
    drop(inbox / "extra.json", sidecar(colour="red"))
    drop(inbox / "extra.png", make_image(inbox.parent / "e.png").read_bytes())
    drop(inbox / "lonely.png", make_image(inbox.parent / "l.png").read_bytes())  # no sidecar ever comes

    errors = {name: outbox / f"{name}.error.json" for name in ("broken", "fake", "extra", "lonely")}
    wait_for(lambda: all(path.exists() for path in errors.values()), 60, what="four error files")
    documents = {name: json.loads(path.read_text()) for name, path in errors.items()}
    assert "not valid JSON" in documents["broken"]["error"]
    assert "not an image" in documents["fake"]["error"]
    assert "'colour'" in documents["extra"]["error"]
    assert "no prompt file" in documents["lonely"]["error"]
    for document in documents.values():
        assert document["state"] == "failed" and document["what_to_do"] and document["detail"]
    # Each error file is in place just before its job_finished event is logged: wait for the events too.
    failures = [e for e in vidrop.wait_event("job_finished", count=4) if e["state"] == "failed"]
    assert {e["input"] for e in failures} == {"broken.png", "fake.png", "extra.png", "lonely.png"}
    assert all(e["level"] == "warning" and e["detail"] for e in failures)

    # Inputs are never deleted, and the daemon still works: fix the sidecar and the job runs.
    assert (inbox / "extra.png").exists() and (inbox / "fake.png").exists()
    drop(inbox / "extra.json", sidecar())
    wait_for(lambda: (outbox / "extra.mp4").exists(), 60, what="the fixed job's video")
    wait_for(lambda: not errors["extra"].exists(), 10, what="the stale error file to go")
    assert vidrop.process.poll() is None
    assert vidrop.stop() == 0


def test_a_second_run_over_the_same_inbox_does_no_work(folders, demo_models):
    for name in ("one", "two"):
        make_image(folders["inbox"] / "set" / f"{name}.png")
        (folders["inbox"] / "set" / f"{name}.json").write_text(sidecar())
    env = vidrop_env(folders, demo_models["ltx"])
    first = run_vidrop(env, "once")
    assert first.returncode == 0, first.stderr
    lines_before = (folders["outbox"] / "set" / "jobs.jsonl").read_text()
    assert len(lines_before.splitlines()) == 2

    second = run_vidrop(env, "once")
    assert second.returncode == 0, second.stderr
    events = [json.loads(line)["event"] for line in second.stderr.splitlines() if line.startswith("{")]
    assert "job_queued" not in events and "job_started" not in events
    assert (folders["outbox"] / "set" / "jobs.jsonl").read_text() == lines_before


def test_once_exits_non_zero_when_a_job_failed(folders, demo_models):
    make_image(folders["inbox"] / "ok.png")
    (folders["inbox"] / "ok.json").write_text(sidecar())
    (folders["inbox"] / "bad.png").write_bytes(b"not an image")
    (folders["inbox"] / "bad.json").write_text(sidecar())
    result = run_vidrop(vidrop_env(folders, demo_models["ltx"]), "once")
    assert result.returncode == 1
    assert (folders["outbox"] / "ok.mp4").exists() and (folders["outbox"] / "bad.error.json").exists()


def test_i2vgen_xl_model_gif_output(folders, demo_models):
    make_image(folders["inbox"] / "loop.jpg", size=(64, 48))
    (folders["inbox"] / "loop.json").write_text(
        json.dumps({"prompt": "a loop", **TINY, "num_frames": 6, "format": "gif", "width": 66})
    )
    result = run_vidrop(vidrop_env(folders, demo_models["i2vgen-xl"]), "once")
    assert result.returncode == 0, result.stderr
    with Image.open(folders["outbox"] / "loop.gif") as gif:
        assert gif.n_frames == 6 and gif.size == (64, 64)
    manifest = json.loads((folders["outbox"] / "loop.json").read_text())
    assert manifest["family"] == "i2vgen-xl" and manifest["outputs"]["video"] == "loop.gif"
    assert manifest["adjustments"][0]["field"] == "width" and manifest["adjustments"][0]["used"] == 64
