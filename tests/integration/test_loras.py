"""LoRAs per job on a tiny real LTX model: a tiny real LoRA (peft, saved with save_lora_weights) changes the
video, is loaded once, switched without reloading the base model, and refused with a clear reason."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.lora_fakes import write_tiny_lora
from vidrop.config.errors import ConfigError, InputError
from vidrop.config.settings import LimitSettings, LoraSettings, load_settings
from vidrop.pipeline.generate import JobParams, VideoGenerator
from vidrop.pipeline.loader import load_model

TINY = {"prompt": "a red square", "num_frames": 9, "steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def lora_files(demo_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    wrong = root / "wrong" / "lora.safetensors"
    wrong.parent.mkdir()
    save_file({"unet.nothing_here.lora_A.weight": torch.ones(4, 4)}, str(wrong))
    return {
        "watercolor": write_tiny_lora(demo_models["ltx"], root / "watercolor", seed=1),
        "ink": write_tiny_lora(demo_models["ltx"], root / "ink", seed=2),
        "wrong": wrong,
    }


@pytest.fixture(scope="module")
def generator(demo_models, lora_files):
    loras = {
        "watercolor": LoraSettings(path=lora_files["watercolor"], weight_range=(0.0, 1.5)),
        "ink": LoraSettings(path=lora_files["ink"].parent, families=["ltx"]),
        "wan_only": LoraSettings(path=lora_files["ink"], families=["wan"]),
        "wrong": LoraSettings(path=lora_files["wrong"]),
    }
    source = str(demo_models["ltx"])
    loaded = load_model(source, family="auto", device="cpu", dtype="auto", offline=True)
    generator = VideoGenerator(loaded, fit="crop", limits=LimitSettings(), loras=loras)
    generator.base_loads = 0

    def reload():
        generator.base_loads += 1
        return load_model(source, family="auto", device="cpu", dtype="auto", offline=True)

    generator.reload = reload
    return generator


def run(generator, **fields):
    params = generator.resolve({**TINY, **fields})
    return generator.generate(Image.new("RGB", (96, 64), (200, 40, 40)), params, 7)


def test_lora_changes_the_video_and_switches_without_reloading_the_model(generator):
    plain = run(generator)
    assert plain.facts["loras"] == []
    with_lora = run(generator, loras=[{"name": "watercolor", "weight": 0.8}])
    assert not np.array_equal(plain.frames, with_lora.frames)
    assert with_lora.facts["loras"][0] | {"path": None} == {
        "name": "watercolor",
        "weight": 0.8,
        "path": None,
        "loaded_now": True,
    }
    again = run(generator, loras=[{"name": "watercolor", "weight": 0.8}])
    assert np.array_equal(again.frames, with_lora.frames)
    assert again.facts["loras"][0]["loaded_now"] is False
    other = run(generator, loras=[{"name": "ink", "weight": 1.0}])
    assert not np.array_equal(other.frames, with_lora.frames)
    assert np.array_equal(run(generator).frames, plain.frames)  # no LoRA asked for: the base model again
    assert generator.adapters.loads == 2  # each LoRA read from its file once
    assert generator.base_loads == 0  # the base model was never reloaded


def test_lora_in_job_params_round_trips(generator):
    params = generator.resolve({**TINY, "loras": [{"name": "watercolor", "weight": 1.2}]})
    assert params.loras == ({"name": "watercolor", "weight": 1.2},)
    assert JobParams.from_dict(params.to_dict()) == params


@pytest.mark.parametrize(
    ("loras", "says"),
    [
        ([{"name": "sepia", "weight": 1}], "The LoRA 'sepia' is not one of the LoRAs"),
        ([{"name": "wan_only", "weight": 1}], "The LoRA 'wan_only' does not fit the model"),
        ([{"name": "watercolor", "weight": 1.6}], "The LoRA 'watercolor' cannot be used at weight 1.6"),
    ],
)
def test_refusals_name_the_lora_and_what_is_offered(generator, loras, says):
    with pytest.raises(InputError) as refused:
        generator.resolve({**TINY, "loras": loras})
    assert says in refused.value.reason
    assert "watercolor, ink, wrong" in refused.value.detail + refused.value.fix


def test_a_lora_for_another_model_is_refused_when_it_loads(generator):
    with pytest.raises(InputError) as refused:
        run(generator, loras=[{"name": "wrong", "weight": 1}])
    assert "The LoRA 'wrong' does not fit the model" in refused.value.reason
    assert "wrong" not in generator.adapters.loaded
    assert run(generator).facts["loras"] == []  # the model still works without it


def test_a_missing_lora_file_stops_the_start(tmp_path):
    with pytest.raises(ConfigError, match="pipeline.loras.sepia.path: .*does not exist"):
        load_settings(
            inbox=tmp_path / "in", outbox=tmp_path / "out", pipeline={"loras": {"sepia": "/nope.safetensors"}}
        )


def test_the_daemon_records_loras_and_refuses_unknown_ones_with_an_error_file(folders, demo_models, lora_files):
    from structlog.testing import capture_logs

    from tests.integration.test_model_set import drop_job
    from vidrop.daemon.app import Daemon
    from vidrop.daemon.wiring import Wiring
    from vidrop.pipeline.model_set import open_models

    def production(settings):
        return open_models(settings.pipeline, limits=settings.limits, memory=settings.memory)

    settings = load_settings(
        inbox=folders["inbox"],
        outbox=folders["outbox"],
        state_dir=folders["state"],
        pipeline={"model": str(demo_models["ltx"]), "device": "cpu", "loras": {"ink": str(lora_files["ink"])}},
        intake={"settle_seconds": 0, "pairing_seconds": 1, "tick_seconds": 0.05},
        gallery={"enabled": False},
    ).settings
    drop_job(folders["inbox"], "inked", loras=[{"name": "ink", "weight": 0.5}])
    drop_job(folders["inbox"], "sepia", loras=[{"name": "sepia", "weight": 0.5}])
    with capture_logs() as logs:
        assert Daemon(Wiring(settings, generator_factory=production)).run(once=True) == 1  # sepia failed
    manifest = json.loads((folders["outbox"] / "inked.json").read_text())
    assert [(lora["name"], lora["weight"]) for lora in manifest["loras"]] == [("ink", 0.5)]
    error = json.loads((folders["outbox"] / "sepia.error.json").read_text())
    assert (
        "The LoRA 'sepia' is not one of the LoRAs" in error["error"]
        and "offered for model default: ink" in error["detail"]
    )
    assert [event["lora"] for event in logs if event["event"] == "lora_loaded"] == ["ink"]


def test_a_preset_naming_a_lora_runs_it_at_its_own_steps_and_guidance(folders, demo_models, lora_files):
    from tests.integration.test_model_set import drop_job
    from vidrop.daemon.app import Daemon
    from vidrop.daemon.wiring import Wiring
    from vidrop.pipeline.model_set import open_models

    def production(settings):
        return open_models(settings.pipeline, limits=settings.limits, memory=settings.memory)

    loras = {"ink": str(lora_files["ink"]), "watercolor": str(lora_files["watercolor"])}
    # What a step-distilled LoRA's preset looks like (README): its steps, guidance 1, the LoRA itself.
    fast = {"families": ["ltx"], "steps": 3, "guidance_scale": 1.0, "loras": [{"name": "ink", "weight": 1.0}]}
    settings = load_settings(
        inbox=folders["inbox"],
        outbox=folders["outbox"],
        state_dir=folders["state"],
        pipeline={"model": str(demo_models["ltx"]), "device": "cpu", "loras": loras, "presets": {"fast": fast}},
        intake={"settle_seconds": 0, "pairing_seconds": 1, "tick_seconds": 0.05},
        gallery={"enabled": False},
    ).settings
    drop_job(folders["inbox"], "quick", preset="fast", steps=None)
    drop_job(folders["inbox"], "styled", preset="fast", steps=None, loras=[{"name": "watercolor", "weight": 0.5}])
    assert Daemon(Wiring(settings, generator_factory=production)).run(once=True) == 0
    quick = json.loads((folders["outbox"] / "quick.json").read_text())
    assert quick["parameters"]["preset"] == "fast"
    assert (quick["parameters"]["steps"], quick["parameters"]["guidance_scale"]) == (3, 1.0)
    assert [(lora["name"], lora["weight"]) for lora in quick["loras"]] == [("ink", 1.0)]
    assert quick["memory"]["adapter_bytes"] > 0  # the adapter's weights are part of the estimate
    styled = json.loads((folders["outbox"] / "styled.json").read_text())  # the request's LoRA joins the preset's
    assert [(lora["name"], lora["weight"]) for lora in styled["loras"]] == [("ink", 1.0), ("watercolor", 0.5)]


@pytest.mark.parametrize(
    ("lora", "says"),
    [
        ({"name": "lightning", "weight": 1.0}, "preset 'fast' names the LoRA 'lightning', which pipeline.loras"),
        ({"name": "ink", "weight": 3.0}, "preset 'fast' asks for the LoRA 'ink' at weight 3.0, outside"),
    ],
)
def test_a_preset_naming_a_lora_not_on_offer_stops_the_start(tmp_path, lora_files, lora, says):
    with pytest.raises(ConfigError, match=says):
        load_settings(
            inbox=tmp_path / "in",
            outbox=tmp_path / "out",
            pipeline={"loras": {"ink": str(lora_files["ink"])}, "presets": {"fast": {"steps": 4, "loras": [lora]}}},
        )


def test_wan22_second_expert_gets_its_part_of_the_lora(demo_models, tmp_path):
    """A14B's low-noise expert (transformer_2) carries the adapter too, at the job's weight."""
    from vidrop.pipeline.loras import LoraAdapters

    path = write_tiny_lora(demo_models["wan2.2"], tmp_path / "wan-lora", seed=3)
    pipe = load_model(str(demo_models["wan2.2"]), family="auto", device="cpu", dtype="auto", offline=True).pipe
    adapters = LoraAdapters({"style": LoraSettings(path=path)})
    expert = pipe.transformer_2
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(1, 36, 1, 4, 4, generator=generator),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn(1, 8, 32, generator=generator),
        "return_dict": False,
    }

    def low_noise_output():
        with torch.no_grad():
            return expert(**inputs)[0]

    plain = low_noise_output()
    adapters.apply(pipe, ({"name": "style", "weight": 1.0},), model="wan22")
    assert "style" in pipe.get_list_adapters()["transformer_2"]
    full = low_noise_output()
    adapters.apply(pipe, ({"name": "style", "weight": 0.5},), model="wan22")
    half = low_noise_output()
    assert not torch.allclose(plain, full) and not torch.allclose(full, half)
    adapters.apply(pipe, (), model="wan22")  # no LoRA asked for: the expert is itself again
    assert torch.allclose(low_noise_output(), plain)
    assert adapters.loads == 1
