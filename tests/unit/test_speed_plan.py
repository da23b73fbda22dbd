from vidrop.pipeline.speed import Device, SpeedLevers, check_plan

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


def test_speed_settings_per_model_override():
    from vidrop.config.settings import load_settings

    speed = load_settings(None, pipeline={"speed": {"cache": "pab", "models": {"a": {"compile": "full"}}}})
    speed = speed.settings.pipeline.speed
    assert speed.for_model("a").compile == "full" and speed.for_model("a").cache == "off"
    assert speed.for_model("b").cache == "pab"
