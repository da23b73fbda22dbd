import importlib.util

import pytest

from vidrop.pipeline.speed import Device, SpeedLevers, check_plan, resolve_auto

CPU = Device("cpu")


def test_plain_plan_passes():
    assert check_plan("m", "svd", SpeedLevers(), CPU) == []


def test_attention_backend_on_unet_family_refused():
    (line,) = check_plan("m", "svd", SpeedLevers(attention="flash"), CPU)
    assert line.startswith("attention=flash model=m:")


def test_unsupported_cache_refused():
    (line,) = check_plan("m", "i2vgen-xl", SpeedLevers(cache="first_block"), CPU)
    assert "cache=first_block" in line


def test_fp8_on_cpu_refused():
    (line,) = check_plan("m", "wan", SpeedLevers(quantize="fp8"), CPU)
    assert "compute capability" in line


def test_regional_compile_needs_repeated_blocks():
    (line,) = check_plan("m", "cogvideox", SpeedLevers(compile="regional"), CPU)
    assert "compile=regional" in line
    assert check_plan("m", "wan", SpeedLevers(compile="regional"), CPU) == []
    for family in ("ltx2", "hunyuan1.5"):  # both declare _repeated_blocks and route through the dispatcher
        assert check_plan("m", family, SpeedLevers(compile="regional", attention="_native_math"), CPU) == []
    assert check_plan("m", "hunyuan1.5", SpeedLevers(cache="pab"), CPU) == []


def test_speed_settings_per_model_override():
    from vidrop.config.settings import load_settings

    speed = load_settings(None, pipeline={"speed": {"cache": "pab", "models": {"a": {"compile": "full"}}}})
    speed = speed.settings.pipeline.speed
    assert speed.for_model("a").compile == "full" and speed.for_model("a").cache == "pab"
    assert speed.for_model("b").cache == "pab"


@pytest.mark.parametrize(
    ("family", "levers", "why"),
    [
        ("cogvideox", SpeedLevers(attention="sage"), "does not route attention through diffusers' dispatcher"),
        ("animatediff", SpeedLevers(attention="flash"), "does not route attention"),
        ("wan", SpeedLevers(attention="no-such"), "no attention backend of that name"),
        ("wan2.2", SpeedLevers(attention="_flash_3"), "needs a CUDA GPU"),
        ("svd", SpeedLevers(cache="pab"), "is a UNet"),
        ("wan", SpeedLevers(cache="faster"), "both guidance passes in one batch"),
        ("ltx", SpeedLevers(cache="mag"), "mag_ratios"),
        ("wan", SpeedLevers(cache="taylorseer"), "match no layer"),
        ("i2vgen-xl", SpeedLevers(compile="regional"), "no repeated blocks"),
        ("svd", SpeedLevers(quantize="fp8"), "no transformer denoiser"),
        ("ltx2", SpeedLevers(cache="pab"), "joint audio and video attention"),
    ],
)
def test_each_lever_that_does_not_fit_the_family_or_device_is_refused_with_why(family, levers, why):
    (line,) = check_plan("m", family, levers, CPU)
    assert " model=m: " in line and why in line, line


def test_on_cuda_without_fp8_compute_capability_fp8_is_refused_and_flash_asks_for_its_package():
    ampere = Device("cuda", (8, 0))
    (line,) = check_plan("m", "wan", SpeedLevers(quantize="fp8"), ampere)
    assert "8.9" in line
    if importlib.util.find_spec("flash_attn") is None:
        (line,) = check_plan("m", "wan", SpeedLevers(attention="flash"), ampere)
        assert "flash_attn" in line


def test_auto_is_plain_on_the_cpu_and_the_exact_levers_on_cuda_where_they_apply():
    assert resolve_auto("wan", SpeedLevers(), CPU) == SpeedLevers(compile="off", attention="native")
    cuda = resolve_auto("wan", SpeedLevers(), Device("cuda", (9, 0)))
    assert cuda.compile == "regional" and cuda.attention in ("flash", "native")
    assert resolve_auto("cogvideox", SpeedLevers(), Device("cuda", (9, 0))).compile == "off"


def test_check_speed_refuses_a_model_on_offer_before_any_weights_load(demo_models):
    from vidrop.config.errors import ConfigError
    from vidrop.config.settings import load_settings
    from vidrop.pipeline.model_set import check_speed

    pipeline = load_settings(
        None,
        pipeline={
            "model": "a",
            "models": {"a": str(demo_models["ltx"]), "b": str(demo_models["ltx"])},
            "device": "cpu",
            "speed": {"models": {"b": {"compile": "regional", "cache": "faster"}}},
        },
    ).settings.pipeline
    with pytest.raises(ConfigError) as refused:
        check_speed(pipeline)
    assert refused.value.reason.startswith("pipeline.speed: cache=faster model=b: ")
    assert "\n" not in refused.value.reason


def test_a_preset_runs_with_its_cache_where_the_family_has_one_and_says_why_where_not():
    from types import SimpleNamespace

    import torch

    from vidrop.pipeline.speed import SpeedPlan

    pipe = SimpleNamespace(transformer=torch.nn.Linear(2, 2))
    levers = SpeedLevers(preset_cache={"fast": "pab"})
    fast = SpeedPlan("wan", levers, "cpu").start_job(pipe, steps=20, shape=(64, 64, 9), preset="fast").finish()
    assert fast.levers["cache"] == "pab" and fast.dropped == []
    plain = SpeedPlan("wan", levers, "cpu").start_job(pipe, steps=20, shape=(64, 64, 9), preset="high").finish()
    assert plain.levers["cache"] == "off" and plain.dropped == []
    unet = SpeedPlan("svd", levers, "cpu").start_job(pipe, steps=20, shape=(64, 64, 9), preset="fast").finish()
    assert unet.levers["cache"] == "off"
    assert unet.dropped == [
        {
            "lever": "cache",
            "value": "pab",
            "why": "preset fast: the svd denoiser is a UNet without diffusers' step caches",
        }
    ]
    short = SpeedPlan("wan", levers, "cpu").start_job(pipe, steps=4, shape=(64, 64, 9), preset="fast").finish()
    assert short.levers["cache"] == "off" and "4 steps is below" in short.dropped[0]["why"]


def test_the_shipped_fast_preset_asks_for_the_pab_cache():
    from vidrop.config.settings import load_settings

    speed = load_settings(None).settings.pipeline.speed
    assert speed.for_model("any").preset_cache == {"fast": "pab"}
