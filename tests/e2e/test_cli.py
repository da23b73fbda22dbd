"""The command line as an operator uses it."""

import json

from tests.conftest import run_vidrop, vidrop_env


def test_invalid_settings_exit_78_with_one_clear_line(folders, demo_models):
    result = run_vidrop(vidrop_env(folders, demo_models["ltx"], VIDROP_PIPELINE__DEVICE="gpu"), "run")
    assert result.returncode == 78
    assert "pipeline.device" in result.stderr and "Traceback" not in result.stderr


def test_missing_model_exits_78_and_says_where_it_looked(folders, tmp_path):
    result = run_vidrop(vidrop_env(folders, tmp_path / "no-model"), "run")
    assert result.returncode == 78
    assert str(tmp_path / "no-model") in result.stderr and "VIDROP_PIPELINE__MODEL" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_reports_every_part(folders, demo_models, tmp_path):
    result = run_vidrop(vidrop_env(folders, demo_models["ltx"]), "check")
    assert result.returncode == 0, result.stdout
    assert "model: " in result.stdout and "family ltx" in result.stdout and "device: cpu" in result.stdout
    assert "ok   versions: vidrop " in result.stdout and ", torch " in result.stdout
    failing = run_vidrop(vidrop_env(folders, tmp_path / "no-model"), "check")
    assert failing.returncode == 1 and "FAIL model" in failing.stdout
    env = {**vidrop_env(folders, demo_models["ltx"]), "VIDROP_PIPELINE__SPEED__QUANTIZE": "fp8"}
    refused = run_vidrop(env, "check")
    assert refused.returncode == 1 and "FAIL speed: quantize=fp8 model=default:" in refused.stdout


def test_config_prints_effective_values_and_their_sources(folders, demo_models, tmp_path):
    settings_file = tmp_path / "vidrop.toml"  # no settings file is read unless one is named or in /etc, ~/.config
    settings_file.write_text('[pipeline]\nfit = "crop"\n')
    result = run_vidrop(vidrop_env(folders, demo_models["ltx"], VIDROP_CONFIG=str(settings_file)), "config")
    assert result.returncode == 0
    lines = {line.split(" = ")[0]: line for line in result.stdout.splitlines() if " = " in line}
    assert lines["pipeline.model"].endswith("# env VIDROP_PIPELINE__MODEL")
    assert lines["pipeline.fit"].endswith("# file")


def test_schema_is_json_schema_of_the_sidecar(folders, demo_models):
    result = run_vidrop(vidrop_env(folders, demo_models["ltx"]), "schema")
    schema = json.loads(result.stdout)
    assert schema["additionalProperties"] is False and "prompt" in schema["properties"]


def test_demo_model_writes_a_loadable_pipeline(tmp_path, folders):
    result = run_vidrop(
        vidrop_env(folders, tmp_path / "demo"), "demo-model", str(tmp_path / "demo"), "--family", "i2vgen-xl"
    )
    assert result.returncode == 0 and "noise" in result.stdout
    index = json.loads((tmp_path / "demo" / "model_index.json").read_text())
    assert index["_class_name"] == "I2VGenXLPipeline"
    assert (tmp_path / "demo" / "tokenizer" / "tokenizer.json").exists()
