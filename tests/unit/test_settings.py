from pathlib import Path

import pytest

from vidrop.config import settings as settings_module
from vidrop.config.settings import (
    ConfigError,
    flat_settings,
    load_settings,
    shipped_settings_text,
    unknown_variables,
)


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("VIDROP_") or name in ("HF_HUB_OFFLINE", "STATE_DIRECTORY", "XDG_CONFIG_HOME"):
            monkeypatch.delenv(name)
    return monkeypatch


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vidrop.toml"
    path.write_text(text)
    return path


def test_shipped_config_is_valid(clean_env, tmp_path):
    loaded = load_settings(write_config(tmp_path, shipped_settings_text()))
    assert loaded.settings.pipeline.model == "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    assert loaded.settings.pipeline.family == "auto"


def test_environment_overrides_the_file_key_by_key(clean_env, tmp_path):
    config = write_config(tmp_path, 'inbox = "/srv/in"\n[pipeline]\nmodel = "/models/a"\nfit = "pad"\n')
    clean_env.setenv("VIDROP_PIPELINE__MODEL", "/models/b")
    clean_env.setenv("VIDROP_OUTBOX", str(tmp_path / "out"))
    loaded = load_settings(config)
    assert loaded.settings.pipeline.model == "/models/b"
    assert loaded.settings.pipeline.fit == "pad"  # the file's other keys in the section survive
    assert loaded.settings.inbox == Path("/srv/in")
    assert loaded.sources["pipeline.model"] == "env VIDROP_PIPELINE__MODEL"
    assert loaded.sources["pipeline.fit"] == "file"
    assert loaded.sources["log_level"] == "default"


def test_the_encoder_preset_ships_as_veryfast_and_can_be_changed(clean_env, tmp_path):
    assert load_settings().settings.output.x264_preset == "veryfast"
    clean_env.setenv("VIDROP_OUTPUT__X264_PRESET", "medium")
    assert load_settings(write_config(tmp_path, "")).settings.output.x264_preset == "medium"


def test_config_file_from_environment_variable(clean_env, tmp_path):
    config = write_config(tmp_path, 'log_level = "debug"\n')
    clean_env.setenv("VIDROP_CONFIG", str(config))
    loaded = load_settings()
    assert loaded.config_file == config and loaded.settings.log_level == "debug"


@pytest.mark.parametrize(
    "text,needle",
    [
        ('[pipeline]\ndevice = "gpu"\n', "pipeline.device"),
        ("[intake]\nsettle_seconds = -1\n", "intake.settle_seconds"),
        ('colour = "red"\n', "colour"),
        ("inbox = [", "cannot be read"),
        ('[output]\nx264_preset = "quick"\n', "output.x264_preset"),
        ('[debug]\nslow_inputs = ["slow-*"]\n', "debug"),  # the test hooks of earlier versions are gone
    ],
)
def test_invalid_settings_give_one_clear_message(clean_env, tmp_path, text, needle):
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path, text))
    assert needle in str(caught.value)


def test_outbox_inside_inbox_is_refused(clean_env, tmp_path):
    config = write_config(tmp_path, f'inbox = "{tmp_path}/in"\noutbox = "{tmp_path}/in/out"\n')
    with pytest.raises(ConfigError, match="separate folders"):
        load_settings(config)


def test_an_inbox_and_outbox_that_are_links_are_resolved_once_at_start(clean_env, tmp_path):
    (tmp_path / "share" / "in").mkdir(parents=True)
    (tmp_path / "share" / "out").mkdir()
    (tmp_path / "inbox").symlink_to(tmp_path / "share" / "in")
    (tmp_path / "outbox").symlink_to(tmp_path / "share" / "out")
    config = write_config(tmp_path, f'inbox = "{tmp_path}/inbox"\noutbox = "{tmp_path}/outbox"\n')
    settings = load_settings(config).settings
    assert settings.inbox == (tmp_path / "share" / "in").resolve()
    assert settings.outbox == (tmp_path / "share" / "out").resolve()


def test_paths_given_through_the_inbox_link_name_inputs_in_the_resolved_inbox(tmp_path):
    from vidrop.daemon.report import relative_inputs

    (tmp_path / "share" / "in" / "spring").mkdir(parents=True)
    (tmp_path / "inbox").symlink_to(tmp_path / "share" / "in")
    inbox = (tmp_path / "inbox").resolve()
    assert relative_inputs([f"{tmp_path}/inbox/spring/hero.png"], inbox) == ["spring/hero.png"]


def test_hf_hub_offline_turns_offline_on(clean_env):
    clean_env.setenv("HF_HUB_OFFLINE", "1")
    assert load_settings().settings.pipeline.offline is True


def test_flat_settings_names_every_value(clean_env):
    names = flat_settings(load_settings().settings)
    assert {"inbox", "pipeline.model", "generation.format", "limits.max_frames"} <= set(names)


def test_unknown_vidrop_variables_come_with_the_nearest_known_name():
    environ = {
        "VIDROP_OUTBX": "/srv/out",
        "VIDROP_DEBUG__STEPS": "1",
        "VIDROP_PIPELINE__MODEL": "x",
        "VIDROP_CONFIG": "/etc/vidrop/vidrop.toml",
        "VIDROP_JOB_ID": "abc",  # set by vidrop for its hooks
        "HOME": "/root",
    }
    assert unknown_variables(environ) == [("VIDROP_DEBUG__STEPS", None), ("VIDROP_OUTBX", "VIDROP_OUTBOX")]


def test_settings_are_found_at_config_then_the_variable_then_etc_then_the_users_folder(clean_env, tmp_path):
    system, user_home = tmp_path / "etc" / "vidrop.toml", tmp_path / "home"
    clean_env.setattr(settings_module, "SYSTEM_CONFIG_FILE", system)
    clean_env.setenv("XDG_CONFIG_HOME", str(user_home))
    assert load_settings().config_file is None
    user = user_home / "vidrop" / "vidrop.toml"
    user.parent.mkdir(parents=True)
    user.write_text('log_level = "debug"\n')
    assert (load_settings().config_file, load_settings().config_origin) == (user, "the user's settings")
    system.parent.mkdir()
    system.write_text('log_level = "warning"\n')
    assert (load_settings().config_file, load_settings().config_origin) == (system, "the system's settings")
    variable = write_config(tmp_path, "")
    clean_env.setenv("VIDROP_CONFIG", str(variable))
    assert (load_settings().config_file, load_settings().config_origin) == (variable, "$VIDROP_CONFIG")
    assert load_settings(user).config_origin == "--config"


def test_relative_paths_in_a_settings_file_are_relative_to_that_file(clean_env, tmp_path, monkeypatch):
    folder = tmp_path / "srv"
    folder.mkdir()
    config = write_config(folder, 'inbox = "in"\noutbox = "../out"\n[intake]\ndone_dir = "done"\n')
    monkeypatch.chdir(tmp_path)
    settings = load_settings(config).settings
    assert settings.inbox == folder / "in"
    assert settings.outbox == tmp_path / "out"
    assert settings.intake.done_dir == folder / "done"
    assert settings.state_dir == folder / "state"  # not in the file: the default, beside the file too


def test_under_systemd_the_state_follows_state_directory_unless_set(clean_env, tmp_path):
    clean_env.setenv("STATE_DIRECTORY", str(tmp_path / "lib"))
    assert load_settings(write_config(tmp_path, "")).settings.state_dir == tmp_path / "lib"
    config = write_config(tmp_path, f'state_dir = "{tmp_path / "mine"}"\n')
    assert load_settings(config).settings.state_dir == tmp_path / "mine"
