"""sd_notify without systemd: a real `vidrop run` talks to a datagram socket the test binds as $NOTIFY_SOCKET."""

from __future__ import annotations

import re
import socket
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import Faults, drop_job, vidrop_env, wait_for
from vidrop.daemon.logs import JOURNAL_SOCKET

WATCHDOG_SECONDS = 2.0


class NotifyListener:
    """Binds the socket systemd would bind and records every datagram with the time it arrived."""

    def __init__(self, path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._running = True
        self._thread = threading.Thread(target=self._read, daemon=True, name="notify-listener")
        self._thread.start()

    def _read(self) -> None:
        while self._running:
            try:
                data = self.socket.recv(4096)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.time(), line))

    def lines(self) -> list[str]:
        return [line for _, line in list(self.messages)]

    def first(self, line: str) -> tuple[int, float] | None:
        for index, (at, seen) in enumerate(list(self.messages)):
            if seen == line:
                return index, at
        return None

    def statuses(self) -> list[str]:
        return [line.removeprefix("STATUS=") for line in self.lines() if line.startswith("STATUS=")]

    def last_watchdog(self) -> float:
        return max((at for at, line in list(self.messages) if line == "WATCHDOG=1"), default=0.0)

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=5)
        self.socket.close()


@pytest.fixture
def notify(tmp_path):
    listener = NotifyListener(tmp_path / "notify.sock")
    yield listener
    listener.close()


def notify_env(folders, model, notify, **extra):
    return vidrop_env(
        folders, model, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(int(WATCHDOG_SECONDS * 1e6)), **extra
    )


def test_ready_after_the_model_status_follows_a_job_watchdog_while_it_progresses_stopping_on_sigterm(
    folders, demo_models, start_vidrop, notify
):
    env = notify_env(folders, demo_models["ltx"], notify, VIDROP_SERVICE__STOP_TIMEOUT_SECONDS="1")
    vidrop = start_vidrop(env, faults=Faults(slow_inputs=["slow-*"], slow_step_seconds=0.3))
    wait_for(lambda: notify.first("READY=1"), 120, what="READY=1")
    ready_index, ready_at = notify.first("READY=1")
    loading_index, _ = notify.first("STATUS=loading model")
    assert loading_index < ready_index
    extend_index, _ = notify.first("EXTEND_TIMEOUT_USEC=90000000")  # more start time while the model loads
    assert loading_index < extend_index < ready_index
    model_loaded = vidrop.wait_event("model_loaded")[0]
    assert datetime.fromisoformat(model_loaded["timestamp"]).timestamp() <= ready_at
    wait_for(lambda: "idle, 0 queued" in notify.statuses(), 30, what="the idle status")

    # A job that progresses slowly: STATUS follows its steps with an ETA, and WATCHDOG=1 keeps coming.
    drop_job(folders["inbox"], "slow-a", steps=6)
    wait_for(lambda: (folders["outbox"] / "slow-a.json").exists(), 120, what="the slow job's manifest")
    steps = [s for s in notify.statuses() if s.startswith("job 1 of 1: slow-a.png, step")]
    assert [re.search(r"step (\d)/6", s).group(1) for s in steps] == ["1", "2", "3", "4", "5", "6"]
    assert re.fullmatch(r"job 1 of 1: slow-a\.png, step 3/6, ETA \d+ s", steps[2])
    lines = notify.lines()
    during = lines[lines.index(f"STATUS={steps[0]}") : lines.index(f"STATUS={steps[-1]}")]
    assert during.count("WATCHDOG=1") >= 5  # one per step at least, none skipped while it progresses
    wait_for(lambda: notify.statuses()[-1] == "idle, 0 queued", 30, what="idle again")

    # SIGTERM during a long job: STOPPING=1 at once; after service.stop_timeout_seconds the job is abandoned
    # between two steps, put back in the queue, and vidrop exits 0.
    drop_job(folders["inbox"], "slow-b", steps=100)
    wait_for(
        lambda: any(s.startswith("job 1 of 1: slow-b.png, step 2/100") for s in notify.statuses()),
        120,
        what="the long job running",
    )
    vidrop.process.terminate()
    assert vidrop.process.wait(timeout=120) == 0
    assert "STOPPING=1" in notify.lines()
    assert any(s.startswith("stopping after this job or in") for s in notify.statuses())
    vidrop.wait_event("job_abandoned")
    with sqlite3.connect(folders["state"] / "ledger.sqlite3") as db:
        assert db.execute("SELECT state FROM jobs WHERE input = 'slow-b.png'").fetchone() == ("queued",)
    assert not (folders["outbox"] / "slow-b.mp4").exists()


def test_watchdog_pings_stop_when_the_main_loop_hangs_and_no_journald_means_json_on_stderr(
    folders, demo_models, start_vidrop, notify, tmp_path
):
    # INVOCATION_ID says "started by systemd" and stderr is no terminal, so vidrop picks journald: there is none
    # here, so it says so and logs JSON lines on stderr instead of crashing or going silent.
    if Path(JOURNAL_SOCKET).exists():
        pytest.skip(f"a journald listens on this host ({JOURNAL_SOCKET}); the test must not write into it")
    env = notify_env(folders, demo_models["ltx"], notify, VIDROP_LOG_FORMAT="auto", INVOCATION_ID="0123456789abcdef")
    vidrop = start_vidrop(env, faults=Faults(hang_inputs=["hang-*"], hang_marker=tmp_path / "hang-marker"))
    wait_for(lambda: notify.first("READY=1"), 120, what="READY=1")
    unreachable = vidrop.wait_event("journal_unreachable")[0]
    assert unreachable["level"] == "warning" and unreachable["socket"] == JOURNAL_SOCKET
    vidrop.wait_event("daemon_ready")
    wait_for(lambda: notify.lines().count("WATCHDOG=1") >= 3, 30, what="watchdog pings while idle")

    drop_job(folders["inbox"], "hang-a")
    vidrop.wait_event("test_hang", timeout=60)
    # What systemd would act on: no WATCHDOG=1 for longer than WatchdogSec.
    wait_for(lambda: time.time() - notify.last_watchdog() > WATCHDOG_SECONDS, 30, what="the pings to stop")
    assert vidrop.process.poll() is None  # hung, not dead: only a watchdog can tell
    vidrop.process.kill()
    vidrop.process.wait(timeout=30)
