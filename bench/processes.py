"""Real `vidrop` processes for the benchmarks: started with settings in the environment, watched, stopped by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]


def vidrop_command(*args: str) -> list[str]:
    """`vidrop ARGS` with this interpreter, so the benchmark measures the checkout it runs from."""
    return [sys.executable, "-m", "vidrop.daemon.cli", *args]


def vidrop_env(root: Path, model: Path, **settings: str) -> dict[str, str]:
    """The caller's environment without its VIDROP_* values, plus this run's folders, model and settings.

    The harness passes settings the way an operator does: VIDROP_* variables (config/settings.py reads them).
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("VIDROP_")}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "VIDROP_INBOX": str(root / "inbox"),
            "VIDROP_OUTBOX": str(root / "outbox"),
            "VIDROP_STATE_DIR": str(root / "state"),
            "VIDROP_PIPELINE__MODEL": str(model),
            "VIDROP_PIPELINE__DEVICE": "cpu",
            "VIDROP_LOG_FORMAT": "json",
        }
    )
    env.update({f"VIDROP_{name.upper()}": value for name, value in settings.items()})
    return env


class DaemonProcess:
    """A `vidrop run` process: its JSON log events with arrival times, its memory and CPU, a clean stop."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            vidrop_command(*(args or ("run",))),
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.info = psutil.Process(self.process.pid)
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.other_lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True, name="bench-log-reader")
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            try:
                self.events.append((time.monotonic(), json.loads(line)))
            except json.JSONDecodeError:
                self.other_lines.append(line)

    def wait_event(self, name: str, timeout: float) -> float:
        """Seconds from start to the first `name` event; RuntimeError if it exits first, TimeoutError after timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for arrived, event in list(self.events):
                if event.get("event") == name:
                    return arrived - self.started_at
            if self.process.poll() is not None:
                raise RuntimeError(f"vidrop exited with {self.process.returncode} before {name}: {self.tail()}")
            time.sleep(0.05)
        raise TimeoutError(f"no {name} event within {timeout} s: {self.tail()}")

    def count(self, name: str, **fields: Any) -> int:
        """How many `name` events with these field values were logged so far."""
        return sum(
            1
            for _, event in list(self.events)
            if event.get("event") == name and all(event.get(key) == value for key, value in fields.items())
        )

    def rss_bytes(self) -> int:
        """Resident memory now."""
        return self.info.memory_info().rss

    def peak_rss_bytes(self) -> int:
        """The process's peak resident memory so far (VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the process (all its threads) so far."""
        times = self.info.cpu_times()
        return times.user + times.system

    def tail(self) -> str:
        lines = [json.dumps(event) for _, event in self.events[-15:]] + self.other_lines[-15:]
        return "\n".join(lines)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; SIGKILL only if it does not stop in time."""
        if self.process.poll() is None:
            self.info.send_signal(signal.SIGTERM)
            _, alive = psutil.wait_procs([self.info], timeout=timeout)
            for process in alive:
                process.kill()
        status = self.process.wait()
        self._reader.join(timeout=10)
        self.process.stderr.close()
        return status

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def run_vidrop_once(env: dict[str, str], timeout: float) -> float:
    """Run `vidrop once` to completion; its wall time in seconds. RuntimeError if it fails."""
    started = time.monotonic()
    result = subprocess.run(vidrop_command("once"), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"vidrop once exited with {result.returncode}: {result.stderr[-3000:]}")
    return elapsed
