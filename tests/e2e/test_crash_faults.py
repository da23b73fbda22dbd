"""Faults from outside, on real `vidrop` processes: a settings file that cannot be read, a job that kills its
process, a holder that stalls past its lease, an inotify that has run out of watches or instances."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.conftest import REPO, VIDROP, drop_job, run_vidrop, vidrop_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

NOT_UTF8 = b'log_level = "info"\n# caf\xe9 in Latin-1\n'


def _one_clear_line(result: subprocess.CompletedProcess) -> list[str]:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 78, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines


# -- settings files that cannot be used ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["not_utf8", "bad_toml", "directory"])
def test_a_settings_file_that_cannot_be_read_stops_the_start_with_one_line_and_78(folders, demo_models, tmp_path,
                                                                                    kind):
    config = tmp_path / "vidrop.toml"
    if kind == "not_utf8":
        config.write_bytes(NOT_UTF8)
    elif kind == "bad_toml":
        config.write_text('log_level = "info\n')
    else:
        config.mkdir()
    result = run_vidrop(vidrop_env(folders, demo_models["ltx"]), "--config", str(config), "run")
    [line] = _one_clear_line(result)
    assert str(config) in line


def test_an_unreadable_settings_file_stops_the_start_with_one_line_and_78(folders, demo_models, tmp_path):
    # Root reads any file, so the process runs as an unprivileged user that may not read this one.
    config = tmp_path / "vidrop.toml"
    config.write_text('log_level = "info"\n')
    config.chmod(0o600)
    tmp_path.chmod(0o755)
    env = vidrop_env(folders, demo_models["ltx"])
    command = [str(VIDROP), "--config", str(config), "check"]
    if os.getuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    [line] = _one_clear_line(result)
    assert str(config) in line and "ermission" in line


def test_sighup_with_a_settings_file_that_is_not_utf8_keeps_the_daemon_and_its_settings(folders, demo_models,
                                                                                       tmp_path, start_vidrop):
    config = tmp_path / "vidrop.toml"
    config.write_text('log_level = "info"\n')
    daemon = start_vidrop(vidrop_env(folders, demo_models["ltx"]), "--config", str(config), "run")
    daemon.wait_event("daemon_ready")
    config.write_bytes(NOT_UTF8)
    daemon.process.send_signal(signal.SIGHUP)
    [failed] = daemon.wait_event("reload_failed")
    assert failed["level"] == "warning" and str(config) in failed["error"]
    assert daemon.process.poll() is None
    drop_job(folders["inbox"], "after")
    wait_for(lambda: (folders["outbox"] / "after.mp4").exists(), 120, what="a job after the failed reload")
    config.write_text('log_level = "debug"\n')
    daemon.process.send_signal(signal.SIGHUP)
    [reloaded] = daemon.wait_event("settings_reloaded")
    assert reloaded["changed"] == ["log_level"]
