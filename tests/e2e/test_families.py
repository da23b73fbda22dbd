"""Every model family through a real `vidrop once`: image-to-video, text-to-video, and the family's rules."""

import json

import av
import pytest
from PIL import Image

from tests.conftest import TINY, make_image, run_vidrop, sidecar, vidrop_env
from tests.e2e.test_run import decode

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("model", "asked", "frames", "size", "adjusted"),
    [
        # SVD takes no prompt: the sidecar's prompt is dropped and the manifest says so.
        ("svd", {}, 9, (64, 64), {"prompt"}),
        # This CogVideoX image model was built for 64×64 and makes 4k+1 frames: 96×80, 8 frames → 64×64, 9.
        ("cogvideox", {"width": 96, "height": 80, "num_frames": 8}, 9, (64, 64), {"width", "height", "num_frames"}),
        # Wan: multiples of 16, 4k+1 frames: 72 wide → 80, 7 frames → 9.
        ("wan", {"width": 72, "num_frames": 7}, 9, (80, 64), {"width", "num_frames"}),
    ],
)
def test_image_to_video_families(folders, demo_models, model, asked, frames, size, adjusted):
    make_image(folders["inbox"] / "shot.png", size=(80, 64))
    (folders["inbox"] / "shot.json").write_text(sidecar(**asked))
    # A request beyond the family's limits is refused with an error that names the field and the family.
    make_image(folders["inbox"] / "long.png")
    (folders["inbox"] / "long.json").write_text(sidecar(num_frames=400))
    result = run_vidrop(vidrop_env(folders, demo_models[model]), "once")
    assert result.returncode == 1, result.stderr[-3000:]
    error = json.loads((folders["outbox"] / "long.error.json").read_text())
    assert "num_frames" in error["error"] and model.split("-")[0] in error["detail"]
    video = decode(folders["outbox"] / "shot.mp4")
    assert video.shape == (frames, size[1], size[0], 3)
    manifest = json.loads((folders["outbox"] / "shot.json").read_text())
    assert manifest["family"] == model.split("-")[0] and manifest["parameters"]["mode"] == "image"
    assert {change["field"] for change in manifest["adjustments"]} == adjusted
    assert all(
        change["rule"].startswith(manifest["family"]) or model in change["rule"] for change in manifest["adjustments"]
    )


def test_animatediff_turns_a_prompt_alone_into_a_looping_gif(folders, demo_models):
    (folders["inbox"] / "loops").mkdir()
    (folders["inbox"] / "loops" / "spin.json").write_text(sidecar(num_frames=8))
    make_image(folders["inbox"] / "loops" / "photo.png")  # an image for a text-only model is refused
    (folders["inbox"] / "loops" / "photo.json").write_text(sidecar())
    (folders["inbox"] / "loops" / "loud.json").write_text(sidecar(num_frames=8, audio=True))  # no sound here
    result = run_vidrop(vidrop_env(folders, demo_models["animatediff"]), "once")
    assert result.returncode == 1, result.stderr[-3000:]
    out = folders["outbox"] / "loops"
    with Image.open(out / "spin.gif") as gif:
        assert gif.n_frames == 8 and gif.size == (64, 64) and gif.info["loop"] == 0
    manifest = json.loads((out / "spin.json").read_text())
    assert manifest["family"] == "animatediff" and manifest["parameters"]["mode"] == "text"
    assert manifest["input"]["path"] == "loops/spin.json" and manifest["video"]["format"] == "gif"
    error = json.loads((out / "photo.error.json").read_text())
    assert "prompt alone" in error["error"] and "animatediff" in error["detail"]
    loud = json.loads((out / "loud.error.json").read_text())
    assert loud["error"] == "This model makes videos without sound." and '"audio"' in loud["what_to_do"]


def test_cogvideox_text_to_video(folders, demo_models):
    (folders["inbox"] / "idea.json").write_text(sidecar(width=80, num_frames=9))
    result = run_vidrop(vidrop_env(folders, demo_models["cogvideox-t2v"]), "once")
    assert result.returncode == 0, result.stderr[-3000:]
    assert decode(folders["outbox"] / "idea.mp4").shape == (9, 64, 80, 3)
    manifest = json.loads((folders["outbox"] / "idea.json").read_text())
    assert manifest["family"] == "cogvideox" and manifest["parameters"]["mode"] == "text"


def test_wan22_two_experts_image_to_video(folders, demo_models):
    # Wan 2.2 A14B: two experts split at boundary_ratio; multiples of 16, 4k+1 frames: 72 wide → 80, 7 → 9.
    make_image(folders["inbox"] / "shot.png", size=(80, 64))
    (folders["inbox"] / "shot.json").write_text(sidecar(width=72, num_frames=7))
    result = run_vidrop(vidrop_env(folders, demo_models["wan2.2"]), "once")
    assert result.returncode == 0, result.stderr[-3000:]
    assert decode(folders["outbox"] / "shot.mp4").shape == (9, 64, 80, 3)
    manifest = json.loads((folders["outbox"] / "shot.json").read_text())
    assert manifest["family"] == "wan2.2" and manifest["parameters"]["mode"] == "image"
    assert {change["field"] for change in manifest["adjustments"]} == {"width", "num_frames"}


def test_wan22_ti2v_text_to_video(folders, demo_models):
    # Wan 2.2 TI2V-5B: its 16× VAE makes sizes multiples of 32: 80 wide → 96 (rounded to the nearest).
    (folders["inbox"] / "idea.json").write_text(sidecar(width=80, num_frames=9))
    result = run_vidrop(vidrop_env(folders, demo_models["wan2.2-ti2v"]), "once")
    assert result.returncode == 0, result.stderr[-3000:]
    assert decode(folders["outbox"] / "idea.mp4").shape == (9, 64, 96, 3)
    manifest = json.loads((folders["outbox"] / "idea.json").read_text())
    assert manifest["family"] == "wan2.2-ti2v" and manifest["parameters"]["mode"] == "text"
    assert manifest["adjustments"][0]["rule"] == "wan2.2-ti2v needs width in multiples of 32"


def test_ltx2_image_to_video_with_sound(folders, demo_models):
    # LTX-2 makes a sound track with the video; a sidecar may ask for none. 72 wide → 64 (multiples of 32).
    make_image(folders["inbox"] / "shot.png", size=(80, 64))
    (folders["inbox"] / "shot.json").write_text(sidecar(width=72))
    make_image(folders["inbox"] / "quiet.png", size=(80, 64), color=(20, 90, 200))
    (folders["inbox"] / "quiet.json").write_text(sidecar(audio=False))
    result = run_vidrop(vidrop_env(folders, demo_models["ltx2"]), "once")
    assert result.returncode == 0, result.stderr[-3000:]
    with av.open(str(folders["outbox"] / "shot.mp4")) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.frames, video.codec_context.width, audio.codec_context.name) == (9, 64, "aac")
        seconds = {stream.type: float(stream.duration * stream.time_base) for stream in (video, audio)}
        assert abs(seconds["audio"] - seconds["video"]) <= 1 / TINY["fps"]
        decoded = sum(frame.samples for frame in container.decode(audio=0))
    manifest = json.loads((folders["outbox"] / "shot.json").read_text())
    assert manifest["family"] == "ltx2" and manifest["parameters"]["audio"] is True
    sound = manifest["audio"]
    assert (sound["codec"], sound["sample_rate"], sound["channels"]) == ("aac", 24000, 2)
    assert sound["samples"] == 9 * 24000 // TINY["fps"] and sound["duration_seconds"] == 9 / TINY["fps"]
    assert decoded >= sound["samples"]  # whole AAC frames of 1024: the last one runs past the end the file sets
    with av.open(str(folders["outbox"] / "quiet.mp4")) as container:
        assert len(container.streams.audio) == 0 and container.streams.video[0].frames == 9
    quiet = json.loads((folders["outbox"] / "quiet.json").read_text())
    assert quiet["audio"] is None and quiet["parameters"]["audio"] is False


def test_hunyuan15_image_to_video(folders, demo_models):
    # HunyuanVideo 1.5 makes one size per aspect ratio at its area (the tiny model's 32², multiples of 4):
    # 48×32 asked → 36×24; 4k+1 frames: 4 → 5. Guidance goes to its guider: 1 (as distilled presets ask) is
    # one transformer pass a step instead of the checkpoint's CFG at 6.
    make_image(folders["inbox"] / "shot.png", size=(96, 64))
    (folders["inbox"] / "shot.json").write_text(sidecar(width=48, height=32, num_frames=4, guidance_scale=1.0))
    result = run_vidrop(vidrop_env(folders, demo_models["hunyuan1.5"]), "once")
    assert result.returncode == 0, result.stderr[-3000:]
    assert decode(folders["outbox"] / "shot.mp4").shape == (5, 24, 36, 3)
    manifest = json.loads((folders["outbox"] / "shot.json").read_text())
    assert manifest["family"] == "hunyuan1.5" and manifest["parameters"]["guidance_scale"] == 1.0
    assert {(a["field"], a["used"]) for a in manifest["adjustments"]} == {
        ("width", 36),
        ("height", 24),
        ("num_frames", 5),
    }
