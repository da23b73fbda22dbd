from dataclasses import fields

import numpy as np
import pytest

from vidrop.config.errors import InputError, ModelUnavailable
from vidrop.config.request import PRESETS, REQUEST_FIELDS, GenerationFields
from vidrop.config.settings import LimitSettings
from vidrop.config.vocabulary import FAMILY_NAMES
from vidrop.pipeline.families import FAMILIES, family_by_name, family_for_model_index, family_for_pipeline_class
from vidrop.pipeline.families.base import FamilyDefaults, SoundTrack
from vidrop.pipeline.generate import FamilyRules, JobParams


def test_ltx_rounds_frames_up_to_8k_plus_1_and_sizes_to_32():
    fitted = family_by_name("ltx").fit(500, 500, 16)
    assert (fitted.width, fitted.height, fitted.num_frames) == (512, 512, 17)
    assert {a["field"] for a in fitted.adjustments} == {"width", "height", "num_frames"}
    assert "8k+1" in next(a["rule"] for a in fitted.adjustments if a["field"] == "num_frames")


def test_a_request_that_fits_is_not_adjusted():
    assert family_by_name("ltx").fit(64, 96, 25).adjustments == []
    assert family_by_name("i2vgen-xl").fit(72, 64, 16).adjustments == []


def test_i2vgen_xl_sizes_in_multiples_of_8():
    fitted = family_by_name("i2vgen-xl").fit(70, 61, 16)
    assert (fitted.width, fitted.height) == (72, 64)


def test_limits_name_the_field_and_value():
    family = family_by_name("ltx")
    with pytest.raises(InputError) as caught:
        family.check_limits(2048, 64, 9, 2, family.limits)
    assert "width" in caught.value.reason and "2048" in caught.value.reason


def test_family_detected_from_pipeline_class():
    assert family_for_pipeline_class("LTXPipeline").name == "ltx"
    assert family_for_pipeline_class("I2VGenXLPipeline").name == "i2vgen-xl"
    with pytest.raises(ModelUnavailable, match="StableDiffusionPipeline"):
        family_for_pipeline_class("StableDiffusionPipeline")


def test_wan_generations_told_apart_by_their_model_index():
    # As in the Wan-AI/*-Diffusers checkpoints' model_index.json files.
    wan21 = {"_class_name": "WanImageToVideoPipeline", "image_encoder": ["transformers", "CLIPVisionModel"]}
    a14b = {"_class_name": "WanPipeline", "boundary_ratio": 0.875, "transformer_2": ["diffusers", "X"]}
    ti2v = {"_class_name": "WanPipeline", "boundary_ratio": None, "expand_timesteps": True}
    assert [family_for_model_index(index).name for index in (wan21, a14b, ti2v)] == ["wan", "wan2.2", "wan2.2-ti2v"]
    assert family_by_name("wan2.2-ti2v").pipeline_classes("WanPipeline").keys() == {"image", "text"}
    assert family_by_name("wan2.2").pipeline_classes("WanPipeline").keys() == {"text"}
    assert family_by_name("wan2.2-ti2v").fit(1280, 720, 120).num_frames == 121
    assert family_by_name("wan2.2-ti2v").fit(1280, 720, 121).height == 736  # to the nearest multiple of 32


def test_the_settings_accept_exactly_the_families_of_the_family_table():
    assert tuple(FAMILIES) == FAMILY_NAMES


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_family_defines_every_preset_in_generation_fields(name):
    presets = FAMILIES[name].presets
    assert tuple(presets) == PRESETS
    for values in presets.values():
        GenerationFields.model_validate(values)  # known fields, in range


def test_family_defaults_and_job_parameters_speak_the_request_fields():
    assert {field.name for field in fields(FamilyDefaults)} <= set(REQUEST_FIELDS)
    assert set(REQUEST_FIELDS) <= {field.name for field in fields(JobParams)}


def test_ltx2_is_told_by_its_pipeline_classes_and_runs_both_modes():
    for class_name in ("LTX2Pipeline", "LTX2ImageToVideoPipeline"):
        family = family_for_model_index({"_class_name": class_name, "vocoder": ["ltx2", "LTX2Vocoder"]})
        assert family.name == "ltx2" and family.pipeline_classes(class_name).keys() == {"image", "text"}
    fitted = family_by_name("ltx2").fit(700, 500, 100)
    assert (fitted.width, fitted.height, fitted.num_frames) == (704, 512, 105)
    assert family_by_name("ltx2").has_sound and not family_by_name("ltx").has_sound


def rules(family: str) -> FamilyRules:
    return FamilyRules(
        name="default", family=family_by_name(family), model="m", modes=("image",), limits=LimitSettings()
    )


def test_sound_is_kept_unless_a_request_asks_for_none():
    assert rules("ltx2").resolve({"prompt": "rain"}).audio is True
    assert rules("ltx2").resolve({"prompt": "rain", "audio": False}).audio is False
    assert rules("ltx").resolve({"prompt": "rain"}).audio is False
    assert rules("ltx").resolve({"prompt": "rain", "audio": False}).audio is False
    # A GIF holds no sound: unasked, the sound is dropped and the manifest says so; asked for, it is refused.
    gif = rules("ltx2").resolve({"prompt": "rain", "format": "gif"})
    assert gif.audio is False and gif.adjustments[-1]["field"] == "audio"
    with pytest.raises(InputError, match="cannot hold sound"):
        rules("ltx2").resolve({"prompt": "rain", "format": "gif", "audio": True})


@pytest.mark.parametrize("family", ["ltx", "wan", "svd"])
def test_asking_for_sound_of_a_family_without_it_is_refused(family):
    with pytest.raises(InputError, match="without sound") as caught:
        rules(family).resolve({"prompt": "rain", "audio": True})
    assert family in caught.value.detail and '"audio"' in caught.value.fix


def test_a_sound_track_is_fitted_to_the_video_it_goes_with():
    short = SoundTrack(np.ones((2, 7969), np.float32), 24000).fitted(9, 24)  # 9 frames at 24 fps: 9000 samples
    assert (short.sample_count, short.generated_samples, short.channels) == (9000, 7969, 2)
    assert short.samples[:, 7969:].max() == 0.0  # silence after the end
    long = SoundTrack(np.ones((1, 30000), np.float32), 24000).fitted(9, 8)
    assert long.sample_count == 27000 and long.generated_samples == 30000


def test_hunyuan15_buckets_its_size_and_drives_guidance_through_the_guider():
    from types import SimpleNamespace

    from diffusers.guiders import ClassifierFreeGuidance

    index = {"_class_name": "HunyuanVideo15ImageToVideoPipeline", "guider": ["diffusers", "ClassifierFreeGuidance"]}
    family = family_for_model_index(index)
    assert family.name == "hunyuan1.5" and family.pipeline_classes(index["_class_name"]).keys() == {"image"}
    # The 480p checkpoint: the size at its 480² area nearest the asked aspect ratio (multiples of 16).
    fitted = family.fit(1280, 720, 100)
    assert (fitted.width, fitted.height, fitted.num_frames) == (624, 352, 101)
    assert [a["field"] for a in fitted.adjustments] == ["width", "height", "num_frames"]
    assert "480p area" in fitted.adjustments[0]["rule"]
    pipe = SimpleNamespace(
        transformer=SimpleNamespace(config=SimpleNamespace(target_size=720)),
        vae_scale_factor_spatial=16,
        guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )
    family.bind(pipe)  # the 720p checkpoint: its own bucket and its guider's guidance as the defaults
    assert (family.defaults.width, family.defaults.height, family.defaults.guidance_scale) == (944, 544, 6.0)
    assert not family.fit(944, 544, 121).adjustments
    # The pipeline re-picks its size from the image: an image of exactly 944×544 would pick 928×544; the
    # image vidrop hands it picks 944×544.
    width, height = family.image_size(944, 544)
    assert family._picked(544, 944) == (544, 928) and family._picked(height, width) == (544, 944)
    arguments = family.call_arguments(
        image=None, prompt="p", negative_prompt="", width=944, height=544, num_frames=121, steps=2,
        guidance_scale=1.0, fps=24, generator=None, callback=None,
    )  # fmt: skip
    assert not {"width", "height", "guidance_scale", "callback_on_step_end"} & arguments.keys()
    family.configure(pipe, guidance_scale=1.0)  # vidrop's guidance is the guider's: 1 turns CFG off
    assert pipe.guider.guidance_scale == 1.0 and pipe.guider.num_conditions == 1
    assert family.denoiser_calls_per_step(1.0) == 1 and family.denoiser_calls_per_step(4.5) == 2


def test_hunyuan15_not_loaded_yet_resolves_by_its_own_config_files(tmp_path):
    import json

    from vidrop.pipeline.loader import inspect_model

    files = {
        "model_index.json": {"_class_name": "HunyuanVideo15ImageToVideoPipeline"},
        "transformer/config.json": {"target_size": 720},
        "vae/config.json": {"spatial_compression_ratio": 16},
        "guider/config.json": {"guidance_scale": 5.0},
    }
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(json.dumps(content))
    family = inspect_model(str(tmp_path), family="auto", device="cpu", dtype="auto", offline=True).family
    assert (family.defaults.width, family.defaults.height, family.defaults.guidance_scale) == (944, 544, 5.0)
    assert (family.fit(1280, 720, 121).width, family.fit(1280, 720, 121).height) == (944, 544)
