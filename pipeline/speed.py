"""The speed plan: which levers (compile, attention backend, step cache, fp8) a model runs with, and applying them.

`check_plan` takes the requested levers, the model's family and the device, and returns the refusals (one line
each: lever, model, why); it knows nothing of systemd or exit codes. `SpeedPlan` applies what passed: the
attention backend, compile and fp8 once the model is loaded; the cache per job (off below its useful step
count); compile stepped aside under an offload mode; the cache dropped after an out-of-memory. Each job's
`JobSpeed` counts the denoiser's forward calls and attention computations (skipped ones are the cache's work)
and says which levers ran and which were dropped, with why.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
import torch
import torch._dynamo

from vidrop.config.errors import ConfigError
from vidrop.config.vocabulary import MemoryMode

log = structlog.get_logger()

# Families whose denoiser routes attention through diffusers' attention dispatcher (set_attention_backend works);
# CogVideoX, SVD, I2VGen-XL and AnimateDiff call their own processors and would silently ignore a backend.
DISPATCHER_FAMILIES = frozenset({"ltx", "ltx2", "wan", "wan2.2", "wan2.2-ti2v", "hunyuan1.5"})
# Families whose denoiser declares `_repeated_blocks` (regional compile); others may only compile whole.
REPEATED_BLOCK_FAMILIES = DISPATCHER_FAMILIES
# Transformer denoisers (CacheMixin: enable_cache; fp8 through torchao); the rest are UNets.
TRANSFORMER_FAMILIES = DISPATCHER_FAMILIES | {"cogvideox"}
# Step caches on the transformer denoisers in diffusers 0.42, as tried on the tiny models (bench/speed.py):
# PAB engages on all; FasterCache needs the conditional and unconditional passes in one batch (CogVideoX does
# that; Wan and LTX call the denoiser twice); FirstBlockCache needs a denoiser of two blocks or more (every real
# checkpoint). TaylorSeer's default identifiers match no module of these denoisers; MagCache needs mag_ratios
# calibrated per checkpoint and step count, which vidrop does not do yet.
CACHE_FAMILIES = {"faster": frozenset({"cogvideox"})}
# Families on which no step cache runs in diffusers 0.42 (tried on the tiny models): the cache is refused.
CACHELESS_FAMILIES = {
    "ltx2": "diffusers' step caches break on LTX-2's joint audio and video attention (tensor sizes differ)",
}
UNSUPPORTED_CACHES = {
    "taylorseer": "its default module patterns match no layer of this denoiser (diffusers 0.42)",
    "mag": "MagCache needs mag_ratios calibrated for the checkpoint and step count; vidrop does not calibrate",
}
# Published: caches do nothing useful at 8 steps or fewer; a job below this runs without its cache.
CACHE_MIN_STEPS = 9
# Working memory a cache adds, in bytes per output voxel (width × height × frames) at 2-byte weights, on top of
# the family's own estimate. FasterCache: +16 GB reserved on CogVideoX-5B at 720×480×49 (diffusers PR #10163)
# is about 1,000 bytes a voxel. PAB keeps one attention output per block it broadcasts, FirstBlockCache one
# residual: no published figure; they are counted as nothing extra and the estimator's calibration (measured
# peaks against estimates) learns what they cost on each machine.
CACHE_BYTES_PER_VOXEL = {"faster": 1000.0}
# Attention backends → the module they need; the ones that run on the CPU.
BACKEND_MODULES = {"flash": "flash_attn", "sage": "sageattention", "xformers": "xformers"}
HUB_BACKEND_MODULE = "kernels"
CPU_BACKENDS = frozenset({"native", "_native_math", "flex"})
OFFLOAD_MODES = frozenset({MemoryMode.MODEL_OFFLOAD, MemoryMode.GROUP_OFFLOAD})
# What compiled code raises when it cannot run (a graph break under fullgraph, the recompile limit, a backend).
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit)


@dataclass(frozen=True)
class SpeedLevers:
    """The levers asked for one model."""

    compile: str = "auto"  # auto | off | regional | full
    attention: str = "auto"  # auto | native | a backend name
    cache: str = "off"  # off | faster | pab | first_block | taylorseer | mag
    quantize: str = "off"  # off | fp8
    preset_cache: dict[str, str] = field(default_factory=dict)  # preset → the cache its jobs run with

    def to_dict(self) -> dict[str, str]:
        return {"compile": self.compile, "attention": self.attention, "cache": self.cache, "quantize": self.quantize}


@dataclass(frozen=True)
class Device:
    """What the plan needs to know of the device."""

    kind: str  # cpu | cuda
    capability: tuple[int, int] | None = None

    @classmethod
    def of(cls, device: str) -> Device:
        """The kind and compute capability of a resolved device name (cpu, cuda:N)."""
        if not device.startswith("cuda"):
            return cls("cpu")
        return cls("cuda", tuple(torch.cuda.get_device_capability(torch.device(device))))


def check_plan(model: str, family: str, levers: SpeedLevers, device: Device) -> list[str]:
    """Every requested lever that does not apply, as `lever=value model=…: why`."""
    problems = []
    if levers.compile == "regional" and family not in REPEATED_BLOCK_FAMILIES:
        problems.append(_line("compile", "regional", model, f"the {family} denoiser declares no repeated blocks"))
    if levers.attention not in ("auto", "native"):
        why = _attention_problem(family, levers.attention, device)
        if why:
            problems.append(_line("attention", levers.attention, model, why))
    if levers.cache != "off":
        why = _cache_problem(family, levers.cache)
        if why:
            problems.append(_line("cache", levers.cache, model, why))
    if levers.quantize == "fp8":
        problems.extend(_fp8_problems(model, family, device))
    return problems


def _attention_problem(family: str, backend: str, device: Device) -> str | None:
    from diffusers.models.attention_dispatch import AttentionBackendName

    known = [name.value for name in AttentionBackendName]
    if backend not in known:
        return f"diffusers has no attention backend of that name (auto, native, {', '.join(known)})"
    if family not in DISPATCHER_FAMILIES:
        return f"the {family} denoiser does not route attention through diffusers' dispatcher; it would be ignored"
    if device.kind != "cuda" and backend not in CPU_BACKENDS:
        return f"it needs a CUDA GPU (on the CPU: {', '.join(sorted(CPU_BACKENDS))})"
    needed = HUB_BACKEND_MODULE if backend.endswith("_hub") else BACKEND_MODULES.get(backend.split("_")[0])
    if needed and importlib.util.find_spec(needed) is None:
        return f"its kernel needs the Python package {needed}, which is not installed"
    return None


def _cache_problem(family: str, cache: str) -> str | None:
    if family not in TRANSFORMER_FAMILIES:
        return f"the {family} denoiser is a UNet without diffusers' step caches"
    if family in CACHELESS_FAMILIES:
        return CACHELESS_FAMILIES[family]
    if family not in CACHE_FAMILIES.get(cache, TRANSFORMER_FAMILIES):
        return "FasterCache needs both guidance passes in one batch; this pipeline calls the denoiser for each"
    return UNSUPPORTED_CACHES.get(cache)


def _fp8_problems(model: str, family: str, device: Device) -> list[str]:
    if family not in TRANSFORMER_FAMILIES:
        return [_line("quantize", "fp8", model, f"family {family} has no transformer denoiser")]
    if device.kind != "cuda" or (device.capability or (0, 0)) < (8, 9):
        return [_line("quantize", "fp8", model, "needs a CUDA GPU of compute capability 8.9 or newer")]
    if importlib.util.find_spec("torchao") is None:
        return [_line("quantize", "fp8", model, "needs torchao, which is not installed")]
    return []


def _line(lever: str, value: str, model: str, why: str) -> str:
    return f"{lever}={value} model={model}: {why}"


def resolve_auto(family: str, levers: SpeedLevers, device: Device) -> SpeedLevers:
    """`auto` made concrete: the exact levers where they apply on a CUDA GPU; plain on the CPU."""
    on_cuda = device.kind == "cuda"
    compile_ = levers.compile
    if compile_ == "auto":
        compile_ = "regional" if on_cuda and family in REPEATED_BLOCK_FAMILIES else "off"
    attention = levers.attention
    if attention == "auto":
        exact = on_cuda and family in DISPATCHER_FAMILIES and importlib.util.find_spec("flash_attn") is not None
        attention = "flash" if exact else "native"
    return replace(levers, compile=compile_, attention=attention)


def denoisers(pipe: Any) -> list[torch.nn.Module]:
    """The pipeline's denoisers: its transformer (and Wan 2.2's second expert) or its UNet."""
    found = [getattr(pipe, name, None) for name in ("transformer", "transformer_2", "unet")]
    return [module for module in found if isinstance(module, torch.nn.Module)]


def cache_config(cache: str, pipe: Any) -> Any:
    """The diffusers config of a cache, with vidrop's parameters (thresholds from the published figures)."""
    import diffusers

    def timestep() -> int:
        current = getattr(pipe, "current_timestep", None)
        return int(current) if current is not None else 1000

    if cache == "first_block":
        return diffusers.FirstBlockCacheConfig(threshold=0.06)
    if cache == "pab":
        return diffusers.PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, current_timestep_callback=timestep
        )
    if cache == "faster":
        return diffusers.FasterCacheConfig(spatial_attention_block_skip_range=2, current_timestep_callback=timestep)
    raise ValueError(f"no such cache {cache!r}")


@dataclass
class JobSpeed:
    """One job's speed facts: what ran, what was dropped and why, warm-up, forward calls made and skipped."""

    levers: dict[str, str]
    dropped: list[dict[str, str]] = field(default_factory=list)
    compile_warmup_seconds: float | None = None
    compiled_graphs: int = 0  # graphs dynamo compiled during this job: 0 for a shape already warm
    denoiser_calls: int = 0
    attention_calls: int | None = 0  # None: not counted (a compiled job: the counter would be traced)
    attention_modules: int = 0

    def drop(self, lever: str, why: str) -> None:
        value = self.levers.get(lever, "off")
        if value in ("off", "native"):
            return
        self.levers[lever] = "off" if lever != "attention" else "native"
        self.dropped.append({"lever": lever, "value": value, "why": why})
        log.info("speed_lever_dropped", lever=lever, value=value, why=why)

    def to_dict(self) -> dict[str, Any]:
        expected = self.denoiser_calls * self.attention_modules
        skipped = None if self.attention_calls is None else max(0, expected - self.attention_calls)
        return {
            "levers": dict(self.levers),
            "dropped": list(self.dropped),
            "compile_warmup_seconds": self.compile_warmup_seconds,
            "compiled_graphs": self.compiled_graphs,
            "denoiser_calls": self.denoiser_calls,
            "attention_calls": self.attention_calls,
            "attention_skipped": skipped,
        }


class SpeedPlan:
    """Applies a model's checked levers: at load (attention, compile, fp8) and around each job (cache, counts)."""

    def __init__(self, family: str, levers: SpeedLevers, device: str) -> None:
        self.family = family
        self.device = device
        self.levers = resolve_auto(family, levers, Device.of(device))
        self.disabled: dict[str, str] = {}  # lever → why it failed on this load (compiled code that cannot run)

    def on_load(self, pipe: Any) -> None:
        """The load-time levers on every denoiser of a freshly loaded pipeline (a new load compiles again)."""
        self.disabled.clear()
        for denoiser in denoisers(pipe):
            if self.levers.attention != "native":
                denoiser.set_attention_backend(self.levers.attention)
            if self.levers.quantize == "fp8":
                quantize_fp8(denoiser)
            if self.levers.compile == "regional":
                denoiser.compile_repeated_blocks(fullgraph=True)
            elif self.levers.compile == "full":  # forward only: the counting hooks stay outside compiled code
                denoiser.forward = torch.compile(denoiser.forward)
        self._try_cache(pipe)
        if self.levers != SpeedLevers(compile="off", attention="native"):
            log.info("speed_levers_applied", family=self.family, **self.levers.to_dict())

    def _try_cache(self, pipe: Any) -> None:
        """The cache switched on and off once at load: a denoiser it cannot hook stops here, not in a job."""
        if self.levers.cache == "off":
            return
        for denoiser in denoisers(pipe):
            try:
                denoiser.enable_cache(cache_config(self.levers.cache, pipe))
            except Exception as exc:  # diffusers raises IndexError, ValueError, ... for a denoiser it cannot hook
                raise ConfigError(
                    f"pipeline.speed: cache={self.levers.cache} family={self.family}: the denoiser "
                    f"{type(denoiser).__name__} cannot take it ({type(exc).__name__}: {exc})",
                    fix='Set cache = "off" (or another cache) for this model in [pipeline.speed].',
                ) from None
            denoiser.disable_cache()

    def extra_bytes(self, *, steps: int, shape: tuple[int, int, int], preset: str | None, dtype_bytes: int) -> int:
        """Working memory this job's levers add on the device (its cache's), for admission and the estimate."""
        cache = self.levers.cache
        if cache == "off":
            cache = self.levers.preset_cache.get(preset or "", "off")
            cache = "off" if cache != "off" and _cache_problem(self.family, cache) else cache
        if "cache" in self.disabled or steps < CACHE_MIN_STEPS:
            cache = "off"
        width, height, frames = shape
        return int(CACHE_BYTES_PER_VOXEL.get(cache, 0.0) * width * height * frames * dtype_bytes / 2)

    def start_job(self, pipe: Any, *, steps: int, shape: tuple[int, int, int], preset: str | None = None) -> JobRun:
        """The job's run of the plan: counters on, the cache (its own, or its preset's) on if the steps are in
        its useful range."""
        return JobRun(self, pipe, self._job_speed(steps=steps, preset=preset), shape=shape)

    def _job_speed(self, *, steps: int, preset: str | None) -> JobSpeed:
        """The levers one job runs with: the model's, its preset's cache, less what does not apply to it."""
        speed = JobSpeed(levers=self.levers.to_dict())
        preset_cache = self.levers.preset_cache.get(preset or "")
        if preset_cache and speed.levers["cache"] == "off":
            speed.levers["cache"] = preset_cache
            why = _cache_problem(self.family, preset_cache)
            if why:
                speed.drop("cache", f"preset {preset}: {why}")
        for lever, why in self.disabled.items():
            speed.drop(lever, why)
        if speed.levers["cache"] != "off" and steps < CACHE_MIN_STEPS:
            speed.drop("cache", f"{steps} steps is below the cache's useful range (at least {CACHE_MIN_STEPS})")
        return speed


class JobRun:
    """The levers around one job's calls: `enter(mode)` before each try, `drop_memory_levers` after an OOM."""

    def __init__(self, plan: SpeedPlan, pipe: Any, speed: JobSpeed, *, shape: tuple[int, int, int]):
        self.plan, self.pipe, self.speed, self.shape = plan, pipe, speed, shape
        self.modules = denoisers(pipe)
        self.handles: list[Any] = []
        self.cached = False
        self.uncompiled: list[tuple[torch.nn.Module, Any]] = []
        self.call_started: tuple[float, int] | None = None
        attention = [
            m for d in self.modules for m in d.modules() if isinstance(getattr(m, "to_q", None), torch.nn.Module)
        ]
        speed.attention_modules = len({id(m) for m in attention})
        if speed.levers["compile"] != "off":  # a hook inside compiled blocks would be traced, and recompile each call
            attention, speed.attention_calls, speed.attention_modules = [], None, 0
        for denoiser in self.modules:
            self.handles.append(denoiser.register_forward_pre_hook(self._before_call))
            self.handles.append(denoiser.register_forward_hook(self._after_call))
        for module in attention:
            self.handles.append(module.to_q.register_forward_pre_hook(self._attention))

    def enter(self, mode: MemoryMode) -> None:
        """Before a try in `mode`: compile steps aside under offload; the cache goes on."""
        if self.speed.levers["compile"] != "off" and mode in OFFLOAD_MODES:
            self.speed.drop("compile", f"memory mode {mode.value} offloads weights; compiled code does not mix")
            self._uncompile()
        if self.speed.levers["cache"] != "off" and not self.cached:
            for denoiser in self.modules:
                denoiser.enable_cache(cache_config(self.speed.levers["cache"], self.pipe))
            self.cached = True

    def drop_memory_levers(self, error: str) -> None:
        """After an out-of-memory: the memory-hungry levers (a cache keeps residuals) go before the next rung."""
        if self.speed.levers["cache"] != "off":
            self.speed.drop("cache", f"out of memory under it ({error})")
            self._cache_off()

    def compile_failed(self, error: BaseException) -> bool:
        """Compiled code failed: the job runs again uncompiled (True), unless compile was not on (False)."""
        if self.speed.levers["compile"] == "off":
            return False
        text = str(error).splitlines()[0] if str(error) else ""
        why = f"compiled code failed ({type(error).__name__}: {text[:200]})"
        self.speed.drop("compile", why)
        self._uncompile()
        self.uncompiled.clear()  # for good: later jobs of this load run uncompiled, and their manifests say why
        self.plan.disabled["compile"] = why
        return True

    def finish(self) -> JobSpeed:
        """Counters off, cache off, compiled code back; the facts."""
        for handle in self.handles:
            handle.remove()
        self._cache_off()
        for module, compiled in self.uncompiled:
            if isinstance(compiled, tuple):
                module.forward = compiled[1]
            else:
                module._compiled_call_impl = compiled
        if self.speed.compile_warmup_seconds is not None:
            width, height, frames = self.shape
            seconds, graphs = self.speed.compile_warmup_seconds, self.speed.compiled_graphs
            log.info("compile_warmup", seconds=seconds, graphs=graphs, width=width, height=height, frames=frames)
        return self.speed

    def _cache_off(self) -> None:
        if self.cached:
            for denoiser in self.modules:
                denoiser.disable_cache()
            self.cached = False

    def _uncompile(self) -> None:
        for denoiser in self.modules:
            forward = denoiser.__dict__.get("forward")
            if forward is not None and hasattr(forward, "_torchdynamo_orig_callable"):
                self.uncompiled.append((denoiser, ("forward", forward)))
                del denoiser.forward
            for module in denoiser.modules():
                compiled = getattr(module, "_compiled_call_impl", None)
                if compiled is not None:
                    self.uncompiled.append((module, compiled))
                    module._compiled_call_impl = None

    def _before_call(self, module: Any, args: Any) -> None:
        self.speed.denoiser_calls += 1
        if self.speed.levers["compile"] != "off":
            self.call_started = (time.monotonic(), _compiled_graphs())

    def _after_call(self, module: Any, args: Any, output: Any) -> None:
        """A call during which dynamo compiled: its time is warm-up (the first job of a shape, or a recompile)."""
        if self.call_started is None:
            return
        started, graphs = self.call_started
        self.call_started = None
        new = _compiled_graphs() - graphs
        if new:
            self.speed.compiled_graphs += new
            self.speed.compile_warmup_seconds = round(
                (self.speed.compile_warmup_seconds or 0.0) + time.monotonic() - started, 3
            )

    def _attention(self, module: Any, args: Any) -> None:
        self.speed.attention_calls = (self.speed.attention_calls or 0) + 1


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def quantize_fp8(denoiser: torch.nn.Module) -> None:
    """fp8 weights and activations with torchao (only where check_plan allowed it: CUDA, capability >= 8.9)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

    quantize_(denoiser, Float8DynamicActivationFloat8WeightConfig())
