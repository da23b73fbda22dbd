"""Hooks: tell a command and webhooks about finished jobs, off the main loop, with retries and a dead letter."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import structlog

from vidrop.config.settings import HookSettings, child_environment
from vidrop.daemon.ledger.base import Job, JobState
from vidrop.daemon.names import json_text

log = structlog.get_logger()

_STOP = object()


class HookFailed(Exception):
    """One attempt did not get through; the message says why."""


@dataclass(frozen=True)
class Delivery:
    """One hook call for one job: where it goes and what it says."""

    kind: str  # command | webhook
    target: str
    job_id: str
    state: str
    payload: dict[str, Any]
    environment: dict[str, str] = field(default_factory=dict)


class HookDispatcher:
    """A JobListener: queues a delivery per hook on done/failed; one worker thread sends them."""

    def __init__(self, settings: HookSettings, *, dead_letter: Path) -> None:
        self.settings = settings
        self.dead_letter = dead_letter
        self._queue: queue.Queue = queue.Queue()
        self._stop_now = threading.Event()
        self._thread = threading.Thread(target=self._work, name="vidrop-hooks")
        # Told (hook kind, "failed" | "delivered" | "dead_lettered") after each attempt and outcome: the metrics.
        self.on_result: Callable[[str, str], None] = lambda hook, result: None

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def close(self) -> None:
        """Deliver what is queued for up to the grace period, then give up on the rest (dead letter)."""
        self._queue.put(_STOP)
        self._thread.join(timeout=self.settings.shutdown_grace_seconds)
        if self._thread.is_alive():
            self._stop_now.set()
            self._thread.join()

    def job_changed(self, job: Job, state: JobState, details: dict[str, Any]) -> None:
        """Queue the deliveries for a finished job; returns at once."""
        if state.value not in self.settings.events:
            return
        payload, environment = _describe(job, state, details)
        if self.settings.command:
            target = " ".join(self.settings.command)
            self._queue.put(Delivery("command", target, job.id, state.value, payload, environment))
        for url in self.settings.urls:
            self._queue.put(Delivery("webhook", url, job.id, state.value, payload))

    def _work(self) -> None:
        while True:
            delivery = self._queue.get()
            if delivery is _STOP:
                return
            if self._stop_now.is_set():
                self._give_up(delivery, attempts=0, error="the daemon stopped before it could be delivered")
                continue
            self._deliver(delivery)

    def _deliver(self, delivery: Delivery) -> None:
        attempts = 1 + self.settings.retries
        error = ""
        for attempt in range(1, attempts + 1):
            try:
                self._send(delivery)
            except HookFailed as exc:
                error = str(exc)
                self.on_result(delivery.kind, "failed")
                log.warning(
                    "hook_attempt_failed",
                    hook=delivery.kind,
                    target=delivery.target,
                    job_id=delivery.job_id,
                    attempt=attempt,
                    error=error,
                )
            else:
                log.info(
                    "hook_delivered",
                    hook=delivery.kind,
                    target=delivery.target,
                    job_id=delivery.job_id,
                    state=delivery.state,
                    attempt=attempt,
                )
                self.on_result(delivery.kind, "delivered")
                return
            if attempt < attempts and self._stop_now.wait(self.settings.backoff_seconds * 2 ** (attempt - 1)):
                break
        self._give_up(delivery, attempts=attempt, error=error)

    def _send(self, delivery: Delivery) -> None:
        body = json_text(delivery.payload).encode("utf-8")
        timeout = self.settings.timeout_seconds
        if delivery.kind == "command":
            _run_command(self.settings.command, body, delivery.environment, timeout)
        else:
            _post(delivery.target, body, delivery.state, timeout)

    def _give_up(self, delivery: Delivery, *, attempts: int, error: str) -> None:
        line = {
            "hook": delivery.kind,
            "target": delivery.target,
            "job_id": delivery.job_id,
            "state": delivery.state,
            "attempts": attempts,
            "error": error,
            "payload": delivery.payload,
        }
        self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
        with open(self.dead_letter, "a", encoding="utf-8") as handle:
            handle.write(json_text(line) + "\n")
        self.on_result(delivery.kind, "dead_lettered")
        log.error(
            "hook_dead_lettered",
            hook=delivery.kind,
            target=delivery.target,
            job_id=delivery.job_id,
            attempts=attempts,
            error=error,
            dead_letter=str(self.dead_letter),
        )


def _describe(job: Job, state: JobState, details: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON a hook receives (the manifest as written, or the error document) and the environment facts."""
    environment = {"VIDROP_JOB_ID": job.id, "VIDROP_JOB_STATE": state.value, "VIDROP_JOB_INPUT": job.input}
    if state is JobState.DONE:
        outputs = details.get("outputs", {})
        payload = _read_json(outputs.get("manifest")) or details.get("manifest", {})
        environment.update(
            {"VIDROP_JOB_VIDEO": outputs.get("video", ""), "VIDROP_JOB_MANIFEST": outputs.get("manifest", "")}
        )
    else:
        payload = dict(details.get("error", {}))
        payload["error_file"] = details.get("error_file")
        environment["VIDROP_JOB_ERROR_FILE"] = details.get("error_file") or ""
    return payload, environment


def _read_json(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _run_command(argv: list[str], body: bytes, environment: dict[str, str], timeout: float) -> None:
    try:
        result = subprocess.run(
            argv, input=body, env=child_environment(environment), capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise HookFailed(f"no answer within {timeout} s") from None
    except OSError as exc:
        raise HookFailed(f"cannot run {argv[0]}: {exc}") from None
    if result.returncode != 0:
        tail = result.stderr.decode("utf-8", "replace")[-500:]
        raise HookFailed(f"exit status {result.returncode}: {tail}")


def _post(url: str, body: bytes, state: str, timeout: float) -> None:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "vidrop", "X-Vidrop-Event": f"job.{state}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise HookFailed(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise HookFailed(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None
