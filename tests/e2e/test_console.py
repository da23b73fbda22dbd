"""`vidrop run` at a terminal: the first Ctrl-C says at once what happens next."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess

import pytest

from tests.conftest import REPO, Faults, drop_job, vidrop_command, vidrop_env, wait_for

pytestmark = pytest.mark.slow


def test_first_ctrl_c_at_a_terminal_says_what_will_happen(folders, demo_models):
    drop_job(folders["inbox"], "photo", steps=40)
    env = vidrop_env(folders, demo_models["ltx"], VIDROP_SERVICE__STOP_TIMEOUT_SECONDS="60")
    command, env = vidrop_command(env, Faults(slow_inputs=["*"], slow_step_seconds=0.2))
    controller, terminal = pty.openpty()
    process = subprocess.Popen([*command, "run"], env=env, cwd=REPO, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    seen = bytearray()

    def read_until(text: bytes):
        def found():
            if text in seen:
                return True
            if not select.select([controller], [], [], 0.2)[0]:
                return False
            try:
                seen.extend(os.read(controller, 65536))
            except OSError:
                pytest.fail(f"the terminal closed before {text!r}: {seen[-3000:]!r}")
            return text in seen

        wait_for(found, 120, interval=0, what=f"{text!r} on the terminal")

    try:
        read_until(b"job_started")
        process.send_signal(signal.SIGINT)
        read_until(b"Ctrl-C again to stop now")
        assert b"vidrop: finishing photo.png, at most 60 s; Ctrl-C again to stop now" in seen
        process.send_signal(signal.SIGINT)
        read_until(b"stopping now")
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
