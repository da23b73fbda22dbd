"""Memory modes and out-of-memory recovery on the real tiny diffusers pipelines, on the CPU.

The OOM is injected with a forward pre-hook on the real denoiser or VAE decoder; the probe is fake
only where free memory must be chosen by the test.
"""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from tests.memory_fakes import GIB, CallCounter, FakeProbe, InjectedOOM
from vidrop.config.errors import GenerationError
from vidrop.config.settings import LimitSettings, MemorySettings
from vidrop.pipeline.encode import check_video, write_video
from vidrop.pipeline.generate import VideoGenerator
from vidrop.pipeline.loader import load_model
from vidrop.pipeline.modes import MemoryMode, mode_state

SMALL = {"prompt": "red square", "width": 32, "height": 32, "num_frames": 9, "steps": 2}
IMAGE = Image.new("RGB", (40, 32), (200, 30, 30))
PLAIN = {"vae_tiling": False, "vae_slicing": False, "model_offload_hooks": False, "group_offload_hooks": False}


def make_generator(demo_models, family="ltx", mode="auto", probe=None):
    loaded = load_model(str(demo_models[family]), family="auto", device="cpu", dtype="auto", offline=True)
    return VideoGenerator(
        loaded,
        fit="crop",
        limits=LimitSettings(),
        memory=MemorySettings(mode=mode),
        probe=probe or FakeProbe([64 * GIB], device="cpu"),
    )


@pytest.fixture(scope="module")
def ltx(demo_models):
    return make_generator(demo_models)


@pytest.fixture(scope="module")
def reference(ltx):
    """The frames of seed 5 in the plain mode, for comparing recovered runs."""
    return ltx.generate(IMAGE, ltx.resolve(SMALL), seed=5).frames


@pytest.mark.parametrize("mode", list(MemoryMode), ids=lambda m: m.value)
def test_each_mode_is_applied_to_the_real_pipeline_and_makes_the_same_valid_video(ltx, reference, mode, tmp_path):
    params = ltx.resolve(SMALL)
    admission = ltx.admit(params)
    forced = replace(admission, mode=mode)
    states = []
    result = ltx.generate(
        IMAGE, params, seed=5, admission=forced, on_step=lambda step, total: states.append(mode_state(ltx.loaded.pipe))
    )
    # While the job runs, the pipeline is in the mode; afterwards it is plain again for the next job.
    expected = {
        "vae_tiling": mode.is_tiled,
        "vae_slicing": mode.is_tiled,
        "model_offload_hooks": mode is MemoryMode.MODEL_OFFLOAD,
        "group_offload_hooks": mode is MemoryMode.GROUP_OFFLOAD,
    }
    assert states and all(state == expected for state in states), states
    assert mode_state(ltx.loaded.pipe) == PLAIN
    assert result.facts["memory"]["mode"] == mode.value and result.facts["memory"]["recovery"] == []
    assert np.array_equal(result.frames, reference)
    write_video(result.frames, tmp_path / "v.mp4", fps=8, fmt="mp4")
    assert check_video(tmp_path / "v.mp4", fmt="mp4").frames == 9


def test_a_forced_mode_from_settings_is_used(demo_models):
    generator = make_generator(demo_models, mode="tiled")
    result = generator.generate(IMAGE, generator.resolve(SMALL), seed=5)
    assert result.facts["memory"]["mode"] == "tiled" and result.facts["memory"]["forced"] is True


def test_oom_while_denoising_retries_one_rung_down_with_the_same_seed(ltx, reference):
    steps = CallCounter(ltx.loaded.pipe.transformer)
    oom = InjectedOOM(ltx.loaded.pipe.transformer, lambda call: call == 2)  # the second denoising step
    try:
        result = ltx.generate(IMAGE, ltx.resolve(SMALL), seed=5)
    finally:
        oom.remove()
        steps.remove()
    memory = result.facts["memory"]
    assert [(s["phase"], s["mode"], s["next_mode"]) for s in memory["recovery"]] == [("denoise", "as_is", "tiled")]
    assert memory["mode"] == "tiled" and oom.raised == 1
    assert steps.calls == 2 + 2  # the first step, the second that failed, then the whole retry
    assert np.array_equal(result.frames, reference)
    assert mode_state(ltx.loaded.pipe) == PLAIN


@pytest.mark.parametrize("family", ["ltx", "i2vgen-xl"])
def test_oom_in_the_decode_reruns_only_the_decode(demo_models, family):
    generator = make_generator(demo_models, family)
    params = generator.resolve({**SMALL, "num_frames": 9 if family == "ltx" else 4})
    pipe = generator.loaded.pipe
    clean = generator.generate(IMAGE, params, seed=3).frames
    denoiser = getattr(pipe, "transformer", None) or pipe.unet
    steps = CallCounter(denoiser)
    oom = InjectedOOM(pipe.vae.decoder, lambda call: not pipe.vae.use_slicing)  # the untiled decode fails
    try:
        result = generator.generate(IMAGE, params, seed=3)
    finally:
        oom.remove()
        steps.remove()
    recovery = result.facts["memory"]["recovery"]
    assert [(s["phase"], s["mode"], s["kept_latents"]) for s in recovery] == [("decode", "as_is", True)]
    assert steps.calls == 2  # the denoiser ran its 2 steps once: only the decode was repeated
    assert result.facts["memory"]["mode"] == "tiled" and np.array_equal(result.frames, clean)


def test_oom_in_every_mode_fails_clearly_and_the_next_job_runs_plain(ltx, reference):
    oom = InjectedOOM(ltx.loaded.pipe.transformer, lambda call: True)
    try:
        with pytest.raises(GenerationError, match="even in the leanest") as caught:
            ltx.generate(IMAGE, ltx.resolve(SMALL), seed=5)
    finally:
        oom.remove()
    assert "as_is, tiled, model_offload, group_offload" in caught.value.detail  # each mode once, never twice
    assert oom.raised == 4 and mode_state(ltx.loaded.pipe) == PLAIN
    result = ltx.generate(IMAGE, ltx.resolve(SMALL), seed=5)
    assert result.facts["memory"]["mode"] == "as_is" and np.array_equal(result.frames, reference)


def test_unload_and_reload_on_the_next_job(demo_models):
    generator = make_generator(demo_models)
    assert generator.unload() and not generator.is_loaded and not generator.unload()
    result = generator.generate(IMAGE, generator.resolve(SMALL), seed=5)
    assert generator.is_loaded and result.facts["memory"]["reload_seconds"] > 0
    again = generator.generate(IMAGE, generator.resolve(SMALL), seed=5)
    assert again.facts["memory"]["reload_seconds"] is None and np.array_equal(again.frames, result.frames)
