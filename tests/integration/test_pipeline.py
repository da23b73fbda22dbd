"""The tiny real models, loaded through the production from_pretrained path."""

import numpy as np
import pytest
from PIL import Image

from vidrop.config.errors import InputError, ModelUnavailable
from vidrop.config.settings import LimitSettings
from vidrop.pipeline.generate import VideoGenerator
from vidrop.pipeline.loader import load_model


@pytest.fixture(scope="module", params=["ltx", "i2vgen-xl"])
def generator(request, demo_models):
    loaded = load_model(str(demo_models[request.param]), family="auto", device="cpu", dtype="auto", offline=True)
    return VideoGenerator(loaded, fit="crop", limits=LimitSettings())


def test_family_is_detected_from_model_index(generator):
    assert generator.describe()["family"] in ("ltx", "i2vgen-xl")
    assert generator.describe()["device"] == "cpu" and generator.describe()["dtype"] == "float32"


def test_generates_requested_frames_and_size_and_reports_every_step(generator):
    params = generator.resolve({"prompt": "red square", "width": 64, "height": 64, "num_frames": 9, "steps": 2})
    steps = []
    result = generator.generate(
        Image.new("RGB", (80, 50), (200, 0, 0)), params, seed=5, on_step=lambda step, total: steps.append((step, total))
    )
    assert result.frames.shape == (9, 64, 64, 3) and result.frames.dtype == np.uint8
    assert steps == [(1, 2), (2, 2)]
    assert result.facts["frames"] == 9 and result.facts["peak_memory_bytes"] > 0


def test_same_seed_same_frames_other_seed_other_frames(generator):
    params = generator.resolve({"prompt": "red square", "width": 64, "height": 64, "num_frames": 9, "steps": 2})
    image = Image.new("RGB", (64, 64), (0, 120, 0))
    first = generator.generate(image, params, seed=11).frames
    assert np.array_equal(first, generator.generate(image, params, seed=11).frames)
    assert not np.array_equal(first, generator.generate(image, params, seed=12).frames)


def test_request_is_fitted_to_the_family_and_the_change_recorded(generator):
    params = generator.resolve({"prompt": "x", "width": 70, "height": 70, "num_frames": 16, "steps": 2})
    assert params.width % generator.family.size_multiple == 0
    if generator.family.name == "ltx":
        assert params.num_frames == 17
        assert any(a["field"] == "num_frames" and a["requested"] == 16 for a in params.adjustments)


def test_family_defaults_fill_what_the_request_leaves_out(generator):
    params = generator.resolve({"prompt": "x"})
    defaults = generator.family.defaults
    assert (params.steps, params.fps, params.guidance_scale) == (defaults.steps, defaults.fps, defaults.guidance_scale)


def test_missing_prompt_and_excess_are_input_errors(generator):
    with pytest.raises(InputError, match="no prompt"):
        generator.resolve({"width": 64})
    with pytest.raises(InputError, match="steps"):
        generator.resolve({"prompt": "x", "steps": 10_000})


def test_missing_model_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(ModelUnavailable) as caught:
        load_model(str(tmp_path / "nowhere"), family="auto", device="cpu", dtype="auto", offline=True)
    assert str(tmp_path / "nowhere") in caught.value.detail
    assert "VIDROP_PIPELINE__MODEL" in caught.value.fix and "HF_HUB_OFFLINE" in caught.value.fix


def test_loading_a_deprecated_family_logs_why(demo_models):
    from structlog.testing import capture_logs

    with capture_logs() as events:
        load_model(str(demo_models["i2vgen-xl"]), family="auto", device="cpu", dtype="auto", offline=True)
    deprecated = [event for event in events if event["event"] == "model_family_deprecated"]
    assert deprecated and deprecated[0]["family"] == "i2vgen-xl" and "Wan 2.2" in deprecated[0]["reason"]
