"""Several models on one daemon: each request names one; as many stay loaded as memory allows.

A `ModelSet` is a Generator: it sends each call to the named model's `VideoGenerator`. Before a job runs,
its model is made resident: other models are unloaded, least recently used first, while the new one's
weights would not fit (or `max_resident` is reached), and again while the job itself would not run in its
fastest memory mode. Loaded models are a cache; the job at hand always wins over keeping one.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import structlog
from PIL import Image

from vidrop.config.errors import ConfigError
from vidrop.config.settings import LimitSettings, MemorySettings, PipelineSettings
from vidrop.pipeline.admission import MemoryAdmission
from vidrop.pipeline.generate import GenerationResult, JobParams, ProgressCallback, VideoGenerator, unknown_model
from vidrop.pipeline.loader import inspect_model, load_model
from vidrop.pipeline.memory import GB, MemoryProbe, probe_for
from vidrop.pipeline.modes import LADDER
from vidrop.pipeline.speed import Device, SpeedLevers, check_plan

log = structlog.get_logger()


@dataclass
class ModelSwitch:
    """What making a job's model resident took: the model before it, what was unloaded, the load time."""

    previous: str | None
    evicted: list[str]
    load_seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the manifest."""
        return {
            "from": self.previous,
            "evicted": self.evicted,
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
        }


class ModelSet:
    """The models on offer by name (the default first), with least-recently-used residency."""

    def __init__(
        self,
        generators: dict[str, VideoGenerator],
        *,
        default: str,
        probe: MemoryProbe,
        reserve_bytes: int,
        max_resident: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if default not in generators:
            raise ValueError(f"default model {default!r} is not among {list(generators)}")
        self.generators = generators
        self.default = default
        self.probe = probe
        self.reserve_bytes = reserve_bytes
        self.max_resident = max_resident
        self.clock = clock
        # Names of loaded models, least recently used first.
        self._recent: OrderedDict[str, None] = OrderedDict(
            (name, None) for name, generator in generators.items() if generator.is_loaded
        )
        self._current: str | None = default if generators[default].is_loaded else None
        # The switch the next job of that model reports in its manifest (cleared after each job).
        self._switch: tuple[str, ModelSwitch] | None = None
        self.switches = 0

    # -- what intake asks ----------------------------------------------------------------------

    def resolve(self, requested: dict[str, Any]) -> JobParams:
        """The named (or default) model's rules applied to the request."""
        return self._named(requested.get("model")).resolve({**requested, "model": None})

    def preset(self, name: str, model: str | None = None) -> dict[str, Any]:
        """The preset of the named (or default) model's family."""
        return self._named(model).preset(name)

    def modes(self, model: str | None = None) -> tuple[str, ...]:
        """What the named (or default) model makes videos from."""
        return self._named(model).modes()

    def set_limits(self, limits: LimitSettings) -> None:
        """New limits for every model."""
        for generator in self.generators.values():
            generator.set_limits(limits)

    def describe(self) -> dict[str, Any]:
        """The default model's facts, and every model on offer with whether it is loaded."""
        return {
            **self.generators[self.default].describe(),
            "models": {
                name: {
                    "model": generator.loaded.model,
                    "family": generator.family.name,
                    "modes": list(generator.loaded.modes),
                    "resident": generator.is_loaded,
                }
                for name, generator in self.generators.items()
            },
        }

    def resident_models(self) -> list[str]:
        """Loaded models, most recently used first (the queue prefers their jobs)."""
        return [name for name in reversed(self._recent) if self.generators[name].is_loaded]

    def resident_loras(self) -> list[str]:
        """The LoRA sets the loaded models keep (the queue prefers jobs that need no adapter loaded)."""
        return list(dict.fromkeys(key for g in self.generators.values() for key in g.resident_loras()))

    # -- what the runner asks ------------------------------------------------------------------

    def admit(self, params: JobParams) -> MemoryAdmission:
        """Make the job's model resident, then the fastest mode the job fits in, unloading others for it."""
        generator = self._activate(params.model)
        admission = generator.admit(params)
        fastest = generator.forced_mode or LADDER[0]
        while admission.mode is not fastest and self._evict_one(
            keep=params.model or self.default, reason="job_needs_memory"
        ):
            admission = generator.admit(params)
        return admission

    def generate(
        self,
        image: Image.Image | None,
        params: JobParams,
        seed: int,
        on_step: ProgressCallback | None = None,
        admission: MemoryAdmission | None = None,
    ) -> GenerationResult:
        """Run the job on its model; the facts say which model and what switching to it took."""
        generator = self._activate(params.model)
        result = generator.generate(image, params, seed, on_step=on_step, admission=admission)
        name = params.model or self.default
        switch = self._switch[1] if self._switch is not None and self._switch[0] == name else None
        result.facts["model_switch"] = switch.to_dict() if switch is not None else None
        return result

    def after_job(self) -> None:
        """The job's model may restart itself (memory drift)."""
        self._switch = None
        if self._current is not None:
            self.generators[self._current].after_job()

    def unload(self) -> bool:
        """Unload every model (idle); True if one was loaded."""
        unloaded = [name for name, generator in self.generators.items() if generator.unload()]
        self._recent.clear()
        self._current = None
        return bool(unloaded)

    # -- residency -----------------------------------------------------------------------------

    def _named(self, model: str | None) -> VideoGenerator:
        name = model or self.default
        if name not in self.generators:
            raise unknown_model(name, list(self.generators))
        return self.generators[name]

    def _activate(self, model: str | None) -> VideoGenerator:
        """Make `model` resident (unloading others as needed) and the most recently used."""
        name = model or self.default
        generator = self._named(name)
        previous = self._current
        load_seconds = None
        evicted: list[str] = []
        if not generator.is_loaded:
            evicted = self._make_room(name, generator.weight_bytes)
            started = self.clock()
            generator.load()
            load_seconds = self.clock() - started
        if previous is not None and previous != name:
            self.switches += 1
            self._switch = (name, ModelSwitch(previous=previous, evicted=evicted, load_seconds=load_seconds))
            log.info(
                "model_switched",
                model=name,
                previous=previous,
                evicted=evicted,
                load_ms=None if load_seconds is None else round(load_seconds * 1000),
                weight_bytes=generator.weight_bytes,
                resident=self.resident_models(),
                switches=self.switches,
            )
        elif load_seconds is not None:
            self._switch = (name, ModelSwitch(previous=previous, evicted=evicted, load_seconds=load_seconds))
        self._recent.pop(name, None)
        self._recent[name] = None
        self._current = name
        return generator

    def _make_room(self, name: str, weight_bytes: int) -> list[str]:
        """Unload least recently used models while `name`'s weights would not fit or too many are loaded."""
        evicted = []
        while True:
            resident = self.resident_models()
            too_many = self.max_resident > 0 and len(resident) >= self.max_resident
            free = self.probe.snapshot().free_bytes - self.reserve_bytes
            if not (too_many or free < weight_bytes):
                return evicted
            victim = self._evict_one(
                keep=name,
                reason="too_many_models" if too_many else "weights_do_not_fit",
                needed_bytes=weight_bytes,
                free_bytes=free,
            )
            if victim is None:
                return evicted  # nothing left to unload: load anyway; admission decides how the job runs
            evicted.append(victim)

    def _evict_one(self, *, keep: str | None, reason: str, **facts: int) -> str | None:
        """Unload the least recently used loaded model other than `keep`; its name, or None if there is none."""
        for name in list(self._recent):
            if name == keep or not self.generators[name].is_loaded:
                continue
            self.generators[name].unload()
            del self._recent[name]
            self.probe.release()
            log.info(
                "model_evicted", model=name, reason=reason, for_model=keep, **facts, resident=self.resident_models()
            )
            if self._switch is not None and self._switch[0] == keep and name not in self._switch[1].evicted:
                self._switch[1].evicted.append(name)
            return name
        return None


def open_models(
    pipeline: PipelineSettings,
    *,
    limits: LimitSettings,
    memory: MemorySettings,
    probe: MemoryProbe | None = None,
    load_default: bool = True,
) -> ModelSet:
    """Every model on offer: the default one loaded now (unless not load_default: `vidrop validate` only asks
    for the request rules), the others looked at (found, family known) only.

    A model that is missing fails here, at start, not at the first job that names it.
    """
    offered = pipeline.offered_models()
    default = pipeline.default_model_name
    if load_default:  # a start: the levers must apply (`vidrop validate` only asks for the request rules)
        check_speed(pipeline)
    generators: dict[str, VideoGenerator] = {}
    for name, source in offered.items():
        arguments = dict(
            family=pipeline.family_of(name), device=pipeline.device, dtype=pipeline.dtype, offline=pipeline.offline
        )
        loaded = (load_model if load_default and name == default else inspect_model)(source, **arguments)
        generators[name] = VideoGenerator(
            loaded,
            fit=pipeline.fit,
            limits=limits,
            memory=memory,
            probe=probe,
            reload=partial(load_model, source, **arguments),
            name=name,
            loras=pipeline.loras,
            speed=SpeedLevers(**pipeline.speed.for_model(name).model_dump()),
            presets=pipeline.presets,
        )
    device = generators[default].loaded.device
    return ModelSet(
        generators,
        default=default,
        probe=probe or probe_for(device),
        reserve_bytes=int(memory.reserve_gb * GB),
        max_resident=memory.max_resident_models,
    )


def check_speed(pipeline: PipelineSettings) -> None:
    """Every model's speed levers against its family and the device, before any weights load: the first that
    does not apply stops the start (ConfigError: one line naming the lever, the model and why; exit 78)."""
    for name, source in pipeline.offered_models().items():
        model = inspect_model(
            source,
            family=pipeline.family_of(name),
            device=pipeline.device,
            dtype=pipeline.dtype,
            offline=pipeline.offline,
        )
        levers = SpeedLevers(**pipeline.speed.for_model(name).model_dump())
        problems = check_plan(name, model.family.name, levers, Device.of(model.device))
        if problems:
            raise ConfigError(
                f"pipeline.speed: {'; '.join(problems)}",
                fix='Set the lever to off (or auto) in [pipeline.speed] or the model\'s override; README "Speed".',
            )
