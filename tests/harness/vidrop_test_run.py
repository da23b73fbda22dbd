"""`vidrop` with faults injected, for end-to-end tests: `python tests/harness/vidrop_test_run.py run ...`.

The real command line (`vidrop.daemon.cli.main`) with the production generator, wrapped so that chosen inputs step
slowly or hang the main loop (to make a watchdog fire, or to stop during a job). Nothing in vidrop is patched:
the wrapper is passed to `main` as its generator factory, and its rules come from this harness's own
environment variables, which vidrop never reads (`Faults.environment()` writes them):

  VIDROP_TEST_SLOW_INPUTS        JSON list of fnmatch patterns on the input's path in the inbox: each step of a
                                 matching input takes VIDROP_TEST_SLOW_STEP_SECONDS longer (default 0.5)
  VIDROP_TEST_HANG_INPUTS        JSON list of patterns: the first step of a matching input hangs the main loop
                                 forever (no more steps, no more WATCHDOG=1), logging `test_hang` first
  VIDROP_TEST_HANG_MARKER        the file created at the hang: once it exists nothing hangs again, so the
                                 restarted process's second attempt runs (needed with VIDROP_TEST_HANG_INPUTS)
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import structlog

REPO = Path(__file__).resolve().parents[2]
SLOW_INPUTS = "VIDROP_TEST_SLOW_INPUTS"
SLOW_STEP_SECONDS = "VIDROP_TEST_SLOW_STEP_SECONDS"
HANG_INPUTS = "VIDROP_TEST_HANG_INPUTS"
HANG_MARKER = "VIDROP_TEST_HANG_MARKER"
EX_USAGE = 64


class FaultsError(Exception):
    """The harness's environment variables cannot be used."""


@dataclass(frozen=True)
class Faults:
    """What the harness injects: slow steps and one hang, for inputs matching fnmatch patterns."""

    slow_inputs: Sequence[str] = ()
    slow_step_seconds: float = 0.5
    hang_inputs: Sequence[str] = ()
    hang_marker: Path | None = None

    def environment(self) -> dict[str, str]:
        """The harness's environment variables for these faults (for a process or a unit's Environment=)."""
        if self.hang_inputs and self.hang_marker is None:
            raise FaultsError("hang_inputs needs a hang_marker: the file that keeps the next attempt from hanging")
        env = {
            SLOW_INPUTS: json.dumps(list(self.slow_inputs)),
            SLOW_STEP_SECONDS: str(self.slow_step_seconds),
            HANG_INPUTS: json.dumps(list(self.hang_inputs)),
        }
        if self.hang_marker is not None:
            env[HANG_MARKER] = str(self.hang_marker)
        return env

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Faults:
        """The faults the harness's environment variables ask for (none set: none)."""
        marker = environ.get(HANG_MARKER)
        faults = cls(
            slow_inputs=_patterns(environ, SLOW_INPUTS),
            slow_step_seconds=_seconds(environ, SLOW_STEP_SECONDS, default=0.5),
            hang_inputs=_patterns(environ, HANG_INPUTS),
            hang_marker=Path(marker) if marker else None,
        )
        faults.environment()  # the same checks as on the way in
        return faults

    def is_slow(self, name: str) -> bool:
        """Whether every step of this input is slowed down."""
        return _matches(name, self.slow_inputs)

    def should_hang(self, name: str) -> bool:
        """Whether this input hangs now: it matches, and nothing has hung yet (the marker is made here, once)."""
        if not _matches(name, self.hang_inputs):
            return False
        assert self.hang_marker is not None
        try:
            with open(self.hang_marker, "x"):  # exclusive: only the first attempt of all hangs
                return True
        except FileExistsError:
            return False


class InjectedGenerator:
    """The production generator, with the faults applied around each step callback; everything else is its own."""

    def __init__(self, generator: Any, faults: Faults) -> None:
        self.generator = generator
        self.faults = faults

    def generate(self, image, params, seed, on_step: Callable[[int, int], None] | None = None, admission=None):
        """The real generation; a slow input sleeps before each step's callback, a hang input hangs in its first."""
        # Read now: between two steps, intake's pass clears the job's context for a moment.
        name = structlog.contextvars.get_contextvars().get("input", "")
        faults = self.faults

        def step(number: int, total: int) -> None:
            if number <= 1 and faults.should_hang(name):
                structlog.get_logger().warning("test_hang", input=name, marker=str(faults.hang_marker))
                threading.Event().wait()  # the main loop's thread: no more steps, no more WATCHDOG=1
            if faults.is_slow(name):
                time.sleep(faults.slow_step_seconds)  # a slow step is what is being simulated
            if on_step is not None:
                on_step(number, total)

        return self.generator.generate(image, params, seed, on_step=step, admission=admission)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)


def main(argv: list[str] | None = None) -> int:
    """Run vidrop's command line with the production generator wrapped in the faults the environment asks for."""
    try:
        faults = Faults.from_environment(os.environ)
    except FaultsError as exc:
        print(f"vidrop_test_run: {exc}", file=sys.stderr)
        return EX_USAGE
    for name in (SLOW_INPUTS, SLOW_STEP_SECONDS, HANG_INPUTS, HANG_MARKER):  # read: no VIDROP_* left unknown
        os.environ.pop(name, None)
    from vidrop.daemon.cli import main as vidrop_main
    from vidrop.daemon.cli import production_generator

    return vidrop_main(
        argv, generator_factory=lambda settings: InjectedGenerator(production_generator(settings), faults)
    )


def _patterns(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    text = environ.get(name, "")
    if not text:
        return ()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FaultsError(f"{name} must be a JSON list of patterns, not {text!r} ({exc})") from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FaultsError(f"{name} must be a JSON list of patterns, not {text!r}")
    return tuple(value)


def _seconds(environ: Mapping[str, str], name: str, *, default: float) -> float:
    text = environ.get(name, "")
    try:
        value = float(text) if text else default
    except ValueError:
        raise FaultsError(f"{name} must be a number of seconds, not {text!r}") from None
    if value < 0:
        raise FaultsError(f"{name} must not be negative, not {text!r}")
    return value


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


if __name__ == "__main__":
    # This checkout's vidrop, wherever the process starts (under systemd: in the state folder), not the
    # harness's own folder.
    sys.path[0] = str(REPO)
    sys.exit(main())
