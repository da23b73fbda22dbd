"""Faults from outside, on real `vidrop` processes: a settings file that cannot be read, a job that kills its
process, a holder that stalls past its lease, an inotify that has run out of watches or instances."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import (
    REPO,
    VIDROP,
    Faults,
    VidropProcess,
    drop_job,
    ledger_jobs,
    run_vidrop,
    vidrop_env,
    wait_for,
)
from vidrop.daemon.outbox import TEMP_PREFIX

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

NOT_UTF8 = b'log_level = "info"\n# caf\xe9 in Latin-1\n'


def _one_clear_line(result: subprocess.CompletedProcess) -> list[str]:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 78, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines


# -- settings files that cannot be used ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["not_utf8", "bad_toml", "directory"])
def test_a_settings_file_that_cannot_be_read_stops_the_start_with_one_line_and_78(folders, demo_models, tmp_path, kind):
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


def test_a_settings_file_with_a_debug_section_stops_the_start_with_one_line_and_78(folders, demo_models, tmp_path):
    # [debug] held test hooks in earlier versions; now it is an unknown section like any other.
    config = tmp_path / "vidrop.toml"
    config.write_text('[debug]\nhang_inputs = ["hang-*"]\n')
    result = run_vidrop(vidrop_env(folders, demo_models["ltx"]), "--config", str(config), "run")
    [line] = _one_clear_line(result)
    assert str(config) in line and "debug" in line


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


def test_sighup_with_a_settings_file_that_is_not_utf8_keeps_the_daemon_and_its_settings(
    folders, demo_models, tmp_path, start_vidrop
):
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


# -- a job that kills its process ------------------------------------------------------------------


def _kill_when_generating(daemon, job_name: str) -> None:
    """SIGKILL from outside the moment the process starts generating job_name (the OOM killer's way)."""
    wait_for(
        lambda: any(e.get("input") == job_name for e in daemon.events_named("generation_started")),
        120,
        interval=0.01,
        what=f"generation_started for {job_name}",
    )
    os.kill(daemon.process.pid, signal.SIGKILL)
    daemon.process.wait()


def test_a_job_that_kills_its_process_three_times_is_set_aside_and_the_daemon_goes_on(
    folders, demo_models, start_vidrop
):
    # Slow steps only widen the moment to kill in; the death itself is a real SIGKILL from outside.
    env = vidrop_env(folders, demo_models["ltx"], VIDROP_RECOVERY__LEASE_SECONDS="2")
    slow = Faults(slow_inputs=["bomb.png"], slow_step_seconds=1)
    drop_job(folders["inbox"], "bomb")
    for _ in range(3):
        _kill_when_generating(start_vidrop(env, faults=slow), "bomb.png")
    daemon = start_vidrop(env, faults=slow)
    error_file = folders["outbox"] / "bomb.error.json"
    wait_for(error_file.exists, 120, what="bomb.error.json")
    error = json.loads(error_file.read_text())
    assert "stopped vidrop 3 times" in error["error"] and "set aside" in error["error"]
    assert "vidrop retry" in error["what_to_do"] and error["detail"]
    [finished] = [e for e in daemon.wait_event("job_finished") if e["input"] == "bomb.png"]
    assert finished["state"] == "failed"
    assert not [e for e in daemon.events_named("generation_started") if e["input"] == "bomb.png"]
    [bomb] = ledger_jobs(folders["state"])
    assert bomb.state.value == "failed"

    # The daemon goes on with the next file, and `vidrop retry` queues the set-aside one with a clean slate.
    drop_job(folders["inbox"], "next")
    wait_for((folders["outbox"] / "next.mp4").exists, 120, what="the next file's video")
    result = run_vidrop(env, "retry", str(folders["inbox"] / "bomb.png"))
    assert result.returncode == 0, result.stderr
    wait_for((folders["outbox"] / "bomb.mp4").exists, 120, what="the retried job's video")
    again = [e for e in daemon.events_named("generation_started") if e["input"] == "bomb.png"]
    assert [e["attempt"] for e in again] == [1]
    assert daemon.process.poll() is None


# -- a holder that stalls past its lease -----------------------------------------------------------


RENAME_SYSCALLS = {"82", "264", "316"}  # rename, renameat, renameat2 on x86_64


def _temporary_video(outbox: Path) -> bool:
    return any(path.name.startswith(TEMP_PREFIX) and path.name.endswith("-shot.mp4") for path in outbox.iterdir())


def _hold_first_rename(pid: int) -> subprocess.Popen:
    """strace holds the process's first rename for 30 s: the holder is caught right where its outputs go
    into place, after its last lease check (the process must not rename anything else meanwhile)."""
    if shutil.which("strace") is None or platform.machine() != "x86_64":
        pytest.skip("needs strace on x86_64 to catch the holder at its rename")
    tracer = subprocess.Popen(
        [
            "strace",
            "-f",
            "-p",
            str(pid),
            "-o",
            "/dev/null",
            "-e",
            "trace=rename,renameat,renameat2",
            "-e",
            "inject=rename,renameat,renameat2:delay_enter=30s:when=1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    attached = tracer.stderr.readline()
    if "attached" not in attached:
        tracer.wait()
        pytest.skip(f"strace cannot attach here: {attached.strip()}")
    return tracer


def _is_renaming(pid: int) -> bool:
    return Path(f"/proc/{pid}/syscall").read_text().split()[0] in RENAME_SYSCALLS


@pytest.mark.parametrize("stalled_at", ["generating", "encoding", "renaming"])
def test_a_holder_stalled_past_its_lease_does_not_write_over_the_new_holders_outputs(
    folders, demo_models, start_vidrop, stalled_at
):
    # veryslow and 256x256 make the encoding last seconds, so the test can stop the holder inside it; no
    # gallery, so that the outputs are the holder's first renames.
    env = vidrop_env(
        folders,
        demo_models["ltx"],
        VIDROP_RECOVERY__LEASE_SECONDS="2",
        VIDROP_OUTPUT__X264_PRESET="veryslow",
        VIDROP_GALLERY__ENABLED="false",
    )
    slow = Faults(slow_inputs=["shot.png"], slow_step_seconds=1)
    first = start_vidrop(env, faults=slow)
    first.wait_event("daemon_ready")
    drop_job(folders["inbox"], "shot", width=256, height=256, num_frames=17)
    tracer = None
    if stalled_at == "generating":
        first.wait_event("generation_started")
    elif stalled_at == "encoding":
        wait_for(lambda: _temporary_video(folders["outbox"]), 120, interval=0.005, what="the holder encoding")
    else:
        first.wait_event("generation_started")
        tracer = _hold_first_rename(first.process.pid)
        wait_for(lambda: _is_renaming(first.process.pid), 120, interval=0.005, what="the holder renaming")
    os.kill(first.process.pid, signal.SIGSTOP)
    try:
        second = start_vidrop(env, faults=slow)
        [finished] = second.wait_event("job_finished", timeout=180)
        assert finished["state"] == "done"
        video, manifest = folders["outbox"] / "shot.mp4", folders["outbox"] / "shot.json"
        before = {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in (video, manifest)}
        written = manifest.read_text()
    finally:
        os.kill(first.process.pid, signal.SIGCONT)
    try:
        [abandoned] = first.wait_event("job_abandoned", timeout=120)
    finally:
        if tracer is not None:
            tracer.terminate()
            tracer.communicate(timeout=30)
    assert abandoned["reason"] == "lease lost to another instance"
    assert {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in before} == before
    assert manifest.read_text() == written and json.loads(written)["attempts"] == 2
    assert not first.events_named("outbox_unavailable") and not first.events_named("job_postponed")
    assert not [p for p in folders["outbox"].iterdir() if p.name.startswith(TEMP_PREFIX)]
    jobs = ledger_jobs(folders["state"])
    assert [job.state.value for job in jobs] == ["done"] and jobs[0].lease_owner is None


# -- inotify limits --------------------------------------------------------------------------------


def _with_inotify_limits(*, watches: int | None = None, instances: int | None = None) -> tuple[str, ...]:
    """A command prefix that runs vidrop in its own user namespace with lowered inotify limits.

    The kernel counts inotify watches and instances per user and namespace (/proc/sys/user/max_inotify_*,
    the same limits fs.inotify.max_user_* set for the host): the daemon meets the real ENOSPC and EMFILE,
    and nobody else on the machine loses a watch.
    """
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces here: {probe.stderr.strip()}")
    limits = []
    if watches is not None:
        limits.append(f"echo {watches} > /proc/sys/user/max_inotify_watches")
    if instances is not None:
        limits.append(f"echo {instances} > /proc/sys/user/max_inotify_instances")
    return ("unshare", "--user", "--map-root-user", "sh", "-c", " && ".join([*limits, 'exec "$0" "$@"']))


@pytest.fixture
def start_limited(folders, demo_models):
    """Start `vidrop run` under lowered inotify limits; each one must stop cleanly (exit 0) at the end."""
    started = []

    def start(**limits) -> VidropProcess:
        # A reconcile that never comes within the test: only events or polls can bring the files.
        env = vidrop_env(
            folders, demo_models["ltx"], VIDROP_INTAKE__RECONCILE_SECONDS="3600", VIDROP_INTAKE__WATCH="events"
        )
        started.append(VidropProcess(env, ("run",), prefix=_with_inotify_limits(**limits)))
        return started[-1]

    yield start
    for daemon in started:
        assert daemon.stop() == 0, daemon.log_text()


def _a_new_folder_is_polled(folders, folder: str) -> None:
    drop_job(folders["inbox"] / folder, "shot")
    wait_for((folders["outbox"] / folder / "shot.mp4").exists, 120, what=f"the video of a file in {folder}")


def test_at_the_inotify_instance_limit_vidrop_starts_polling_and_says_why(folders, start_limited):
    daemon = start_limited(instances=0)
    [started] = daemon.wait_event("intake_started")
    [exhausted] = daemon.events_named("inotify_exhausted")
    assert exhausted["sysctl"] == "fs.inotify.max_user_instances" and exhausted["errno"] == "EMFILE"
    assert started["mode"] == "polling" and "max_user_instances" in started["polling_reason"]
    _a_new_folder_is_polled(folders, "new/folder")


@pytest.mark.parametrize("reached", ["at_start", "as_folders_come"])
def test_past_the_inotify_watch_limit_new_folders_are_polled_and_the_log_says_why(folders, start_limited, reached):
    (folders["inbox"] / "old").mkdir()
    if reached == "at_start":
        for name in ("a", "b", "c"):
            (folders["inbox"] / name).mkdir()
    daemon = start_limited(watches=2)  # the inbox and old/; every other folder is beyond the limit
    [started] = daemon.wait_event("intake_started")
    if reached == "at_start":
        assert started["mode"] == "polling" and "max_user_watches" in started["polling_reason"]
    else:
        assert started["mode"] == "events" and not daemon.events_named("inotify_exhausted")
        for name in ("a", "b", "c"):
            (folders["inbox"] / name).mkdir()
    [exhausted] = daemon.wait_event("inotify_exhausted", timeout=30)
    assert exhausted["sysctl"] == "fs.inotify.max_user_watches" and exhausted["errno"] == "ENOSPC"
    assert exhausted["mode"] == "polling" and "sysctl -w fs.inotify.max_user_watches" in exhausted["fix"]
    _a_new_folder_is_polled(folders, "c/deeper")
