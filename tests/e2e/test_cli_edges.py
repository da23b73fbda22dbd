"""The edges of the command line: --version, closed pipes, bad values, wrong folders: one line, never a traceback.

None of these loads a model: each is a cheap real `vidrop` process.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess

import pytest

from tests.conftest import run_vidrop, vidrop_command, vidrop_env
from vidrop.daemon.ledger.sqlite import SqliteLedger


def test_version_names_vidrop_diffusers_and_torch(folders, tmp_path):
    result = run_vidrop(vidrop_env(folders, tmp_path / "no-model"), "--version")
    assert result.returncode == 0 and result.stderr == ""
    assert re.fullmatch(r"vidrop \S+ \(diffusers \S+, torch \S+\)\n", result.stdout)


def closed_pipe_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run `vidrop ARGS` with stdout a pipe whose reader has already gone (`vidrop config | head -1`)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        command, env = vidrop_command(env)
        return subprocess.run(
            [*command, *args], env=env, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("command", ["config", "schema", "status"])
def test_a_closed_pipe_ends_quietly(folders, tmp_path, command):
    env = vidrop_env(folders, tmp_path / "no-model")
    if command == "status":
        SqliteLedger(folders["state"] / "ledger.sqlite3").close()  # a ledger as any run leaves it
    result = closed_pipe_run(env, command)
    assert result.returncode == 141 and result.stderr == ""


def test_a_malformed_json_value_is_one_line_exit_78(folders, tmp_path):
    result = run_vidrop(vidrop_env(folders, tmp_path / "no-model", VIDROP_PIPELINE__MODELS="{ltx: x}"), "config")
    assert result.returncode == 78 and "Traceback" not in result.stderr
    assert result.stderr.startswith("vidrop: invalid settings: VIDROP_PIPELINE__MODELS is not valid JSON (")
    assert len(result.stderr.splitlines()) == 1


def test_a_mistyped_variable_gets_a_warning_naming_the_nearest_setting(folders, tmp_path):
    env = vidrop_env(
        folders, tmp_path / "no-model", VIDROP_OUTBX="/srv/out", VIDROP_PIPELIN__MODEL="x", VIDROP_DEBUG__STEPS="1"
    )
    result = run_vidrop(env, "config")
    assert result.returncode == 0
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "vidrop: warning: VIDROP_DEBUG__STEPS is not a vidrop setting and is ignored; "
        "`vidrop config` lists every setting",
        "vidrop: warning: VIDROP_OUTBX is not a vidrop setting and is ignored; did you mean VIDROP_OUTBOX?",
        "vidrop: warning: VIDROP_PIPELIN__MODEL is not a vidrop setting and is ignored; "
        "did you mean VIDROP_PIPELINE__MODEL?",
    ]


@pytest.mark.parametrize("command", [("status",), ("retry", "--failed")])
def test_status_and_retry_refuse_a_state_folder_without_a_ledger(folders, tmp_path, command):
    typo = tmp_path / "stat"
    result = run_vidrop(vidrop_env(folders, tmp_path / "no-model", VIDROP_STATE_DIR=str(typo)), *command)
    assert result.returncode == 78 and len(result.stderr.splitlines()) == 1
    assert f"no ledger at {typo / 'ledger.sqlite3'}" in result.stderr and "env VIDROP_STATE_DIR" in result.stderr
    assert not typo.exists()  # no empty ledger made


def test_demo_model_refuses_a_file_an_unwritable_place_and_a_folder_that_is_not_empty(folders, tmp_path):
    env = vidrop_env(folders, tmp_path / "no-model")
    a_file = tmp_path / "model.safetensors"
    a_file.write_bytes(b"x")
    onto_file = run_vidrop(env, "demo-model", str(a_file))
    assert (
        onto_file.returncode == 73
        and onto_file.stderr == f"vidrop demo-model: {a_file} is a file, not a folder; name a new folder\n"
    )
    under_file = run_vidrop(env, "demo-model", str(a_file / "demo"))
    assert under_file.returncode == 73 and "is not a writable folder" in under_file.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "model_index.json").write_text("{}")
    refused = run_vidrop(env, "demo-model", str(full))
    assert refused.returncode == 73 and "is not empty" in refused.stderr and "--force" in refused.stderr
    assert (full / "model_index.json").read_text() == "{}"
    for result in (onto_file, under_file, refused):
        assert len(result.stderr.splitlines()) == 1 and result.stdout == ""


def test_a_model_neither_cached_nor_reachable_is_one_line_naming_hf_download_and_the_cache(folders, tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on: connections are refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = vidrop_env(
        folders,
        "acme/not-cached-model",
        HF_HOME=str(tmp_path / "hf"),
        HF_ENDPOINT=f"http://127.0.0.1:{port}",
        HF_HUB_OFFLINE="0",
    )
    result = run_vidrop(env, "check")
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith("FAIL model: The model 'acme/not-cached-model' is not in the")
    assert f"the hub cannot be reached (127.0.0.1:{port}: Connection refused)" in failed[0]
    assert "`hf download acme/not-cached-model --local-dir " in failed[0] and "huggingface-cli" not in result.stdout
    assert f"HF_HOME={tmp_path / 'hf'}" in failed[0] and "HF_HOME=/var/cache/vidrop/huggingface" in failed[0]
    assert "Retrying" not in result.stderr and "Traceback" not in result.stderr
