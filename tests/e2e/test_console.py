"""`vidrop run` at a terminal: readable events in local time, one live progress line for the running job, and
a first Ctrl-C that says at once what happens next."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
from datetime import datetime, timedelta

import pytest

from tests.conftest import REPO, Faults, drop_job, vidrop_command, vidrop_env, wait_for

pytestmark = pytest.mark.slow


def test_first_ctrl_c_at_a_terminal_says_what_will_happen(folders, demo_models):
    drop_job(folders["inbox"], "photo", steps=40)
    env = vidrop_env(
        folders,
        demo_models["ltx"],
        VIDROP_SERVICE__STOP_TIMEOUT_SECONDS="60",
        VIDROP_LOG_FORMAT="auto",  # a terminal: the console format and the live line
        TZ="Asia/Tokyo",  # +09:00 all year: local time is told apart from UTC whatever the machine's zone
        TERM="xterm-256color",
    )
    started = datetime.fromtimestamp(int(time.time()), tz=None).astimezone()
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
        read_until(b"photo.png  step 2 of 40")  # the live line: input, step n of N, elapsed, ETA
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode("utf-8", "replace"))  # without colours
        line = text[text.rindex("photo.png  step") :].splitlines()[0]
        assert re.search(r"step \d+ of 40 .* \d:\d\d:\d\d ETA \d:\d\d:\d\d", line), line
        stamp = re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+09:00) \[info\s*\] daemon_starting", text)
        assert stamp, text[:2000]
        at = datetime.fromisoformat(stamp.group(1))
        assert at.utcoffset() == timedelta(hours=9) and started <= at <= datetime.now().astimezone()
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
