"""Fakes shared by the tests, at the seams of DESIGN.md: a clock the test moves, a notifier that records what
systemd would be told, a generator that returns frames at once (with a real family's request rules), and a
daemon wired with them over a temporary SQLite ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from tests.memory_fakes import FakeProbe  # noqa: F401  (the memory probe's fake, shared from here too)
from vidrop.config.settings import LimitSettings, Settings, load_settings
from vidrop.daemon.app import Daemon
from vidrop.daemon.recorder import JobListener
from vidrop.daemon.wiring import Wiring
from vidrop.pipeline.admission import MemoryAdmission
from vidrop.pipeline.families import family_by_name
from vidrop.pipeline.generate import IMAGE, TEXT, FamilyRules, GenerationResult, JobParams
from vidrop.pipeline.memory import MemorySnapshot
from vidrop.pipeline.modes import MemoryMode

# Inputs settle, pair and decode at once: the loop's tests need no grace periods.
QUICK_INTAKE = {"settle_seconds": 0, "pairing_seconds": 0, "decode_grace_seconds": 0, "tick_seconds": 0.01}


class FakeClock:
    """Wall and monotonic time in one number that only the test moves."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingNotifier:
    """Records what systemd would be told."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def ready(self) -> None:
        self.messages.append("READY=1")

    def status(self, text: str) -> None:
        self.messages.append(f"STATUS={text}")

    def watchdog(self) -> None:
        self.messages.append("WATCHDOG=1")

    def reloading(self) -> None:
        self.messages.append("RELOADING=1")

    def stopping(self) -> None:
        self.messages.append("STOPPING=1")

    def extend_timeout(self, seconds: float) -> None:
        self.messages.append(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    @property
    def statuses(self) -> list[str]:
        """The STATUS= texts, in order."""
        return [message.removeprefix("STATUS=") for message in self.messages if message.startswith("STATUS=")]


StepHook = Callable[[JobParams, int], None]


class FakeGenerator:
    """Frames at once, one colour per seed; the request rules are a real family's (LTX by default), so what
    intake admits or refuses is what it would with that model loaded.

    `on_step(params, step)` runs at each step (a test raises from it, or asks the daemon to stop).
    """

    def __init__(
        self,
        *,
        family: str = "ltx",
        modes: tuple[str, ...] = (IMAGE, TEXT),
        limits: LimitSettings | None = None,
        on_step: StepHook | None = None,
        name: str = "default",
    ) -> None:
        self.rules = FamilyRules(
            name=name,
            family=family_by_name(family),
            model=f"fake-{family}",
            modes=modes,
            limits=limits or LimitSettings(),
        )
        self.on_step = on_step
        self.generated: list[tuple[JobParams, int]] = []
        self.unloads = 0
        self.is_loaded = True

    def resolve(self, requested: dict[str, Any]) -> JobParams:
        return self.rules.resolve(requested)

    def preset(self, name: str, model: str | None = None) -> dict[str, Any]:
        return self.rules.preset(name, model)

    def modes(self, model: str | None = None) -> tuple[str, ...]:
        return self.rules.modes(model)

    def set_limits(self, limits: LimitSettings) -> None:
        self.rules.set_limits(limits)

    def admit(self, params: JobParams) -> MemoryAdmission:
        snapshot = MemorySnapshot(device="cpu", free_bytes=1 << 34, total_bytes=1 << 35)
        return MemoryAdmission(mode=MemoryMode.AS_IS, need_bytes=0, reserve_bytes=0, snapshot=snapshot, needs={})

    def generate(self, image, params: JobParams, seed: int, on_step=None, admission=None) -> GenerationResult:
        self.is_loaded = True
        for step in range(1, params.steps + 1):
            if self.on_step is not None:
                self.on_step(params, step)
            if on_step is not None:
                on_step(step, params.steps)
        self.generated.append((params, seed))
        frames = np.full((params.num_frames, params.height, params.width, 3), seed % 256, dtype=np.uint8)
        memory = {
            "mode": MemoryMode.AS_IS.value,
            "estimated_bytes": 0,
            "measured_bytes": 0,
            "recovery": [],
            "after_job": {"allocated_bytes": 0, "reserved_bytes": 0, "rss_bytes": 0},
        }
        return GenerationResult(
            frames=frames,
            facts={
                **self.describe(),
                "timings": {"generate_seconds": 0.0},
                "peak_memory_bytes": 0,
                "memory": memory,
                "frames": params.num_frames,
                "width": params.width,
                "height": params.height,
            },
        )

    def after_job(self) -> None:
        pass

    def unload(self) -> bool:
        self.unloads += 1
        self.is_loaded = False
        return True

    def resident_models(self) -> list[str]:
        return [self.rules.name] if self.is_loaded else []

    def resident_loras(self) -> list[str]:
        return [""]  # no LoRA: the fake applies none

    def describe(self) -> dict[str, Any]:
        return {
            "model_name": self.rules.name,
            "model": self.rules.model,
            "family": self.rules.family.name,
            "device": "cpu",
            "dtype": "float32",
            "load_seconds": 0.0,
            "modes": list(self.rules.model_modes),
        }


def quick_settings(folders: dict[str, Path], **overrides: Any) -> Settings:
    """Settings for a daemon over the test's folders, whose inputs need no waiting."""
    intake = {**QUICK_INTAKE, **overrides.pop("intake", {})}
    return load_settings(
        None, inbox=folders["inbox"], outbox=folders["outbox"], state_dir=folders["state"], intake=intake, **overrides
    ).settings


def fake_daemon(
    settings: Settings,
    generator: FakeGenerator,
    *,
    notifier: RecordingNotifier | None = None,
    listeners: tuple[JobListener, ...] = (),
    settings_loader: Callable[[], Settings] | None = None,
) -> Daemon:
    """A daemon wired with the fake generator; its ledger is a temporary SQLite file in the state folder."""
    wiring = Wiring(
        settings,
        generator_factory=lambda _settings: generator,
        notifier=notifier or RecordingNotifier(),
        listeners=listeners,
    )
    return Daemon(wiring, settings_loader=settings_loader)
