"""The generator: resolve a request against the family, prepare the image, call the model, collect facts."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import numpy as np
import structlog
import torch
from PIL import Image

from vidrop.config.errors import TRY_AGAIN_FIX, GenerationError, InputError
from vidrop.config.request import REQUEST_FIELDS, Preset, VideoFormat
from vidrop.config.settings import DEFAULT_MODEL_NAME, LimitSettings, LoraSettings, MemorySettings, PresetSettings
from vidrop.config.vocabulary import MemoryMode
from vidrop.pipeline.admission import (
    MemoryAdmission,
    MemoryEstimator,
    ModelFootprint,
    choose_mode,
    weights_on_device,
)
from vidrop.pipeline.families.base import Family, FamilyLimits, SoundTrack
from vidrop.pipeline.images import fit_image
from vidrop.pipeline.loader import DTYPES, LoadedModel, load_model
from vidrop.pipeline.loras import LoraAdapters, check_loras
from vidrop.pipeline.memory import GB, DriftWatch, MemoryProbe, probe_for
from vidrop.pipeline.modes import apply_mode, reset_mode
from vidrop.pipeline.speed import COMPILE_ERRORS, JobRun, SpeedLevers, SpeedPlan

log = structlog.get_logger()

ProgressCallback = Callable[[int, int], None]

IMAGE, TEXT = "image", "text"


@dataclass(frozen=True)
class JobParams:
    """The effective parameters of one job, after defaults, fitting and limits: a value for every request
    field (config/request.py), and what resolving it found."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    steps: int
    guidance_scale: float
    fps: int
    format: VideoFormat
    seed: int | None
    adjustments: tuple[dict[str, Any], ...] = ()
    mode: Literal["image", "text"] = IMAGE  # text: no image, the prompt alone
    preset: Preset | None = None
    model: str = ""  # which of the models on offer makes it (its name in the settings); "": the default
    loras: tuple[dict[str, Any], ...] = ()  # {"name", "weight"} for each LoRA asked for
    audio: bool = False  # whether the video gets the sound track its model makes (LTX-2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the ledger and the manifest."""
        data = asdict(self)
        data["adjustments"] = list(self.adjustments)
        data["loras"] = list(self.loras)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobParams:
        """The inverse of to_dict (keys that are not parameters, such as a variant's suffix, are left out)."""
        known = {name: value for name, value in data.items() if name in cls.__dataclass_fields__}
        return cls(
            **{**known, "adjustments": tuple(data.get("adjustments", ())), "loras": tuple(data.get("loras") or ())}
        )


@dataclass
class GenerationResult:
    """Frames (uint8, frames × height × width × 3) and the facts the manifest records."""

    frames: np.ndarray
    facts: dict[str, Any] = field(default_factory=dict)
    sound: SoundTrack | None = None  # the sound track, exactly as long as the frames at params.fps


class RequestRules(Protocol):
    """What intake needs of the loaded models: a request's effective parameters, presets, modes, limits."""

    def resolve(self, requested: dict[str, Any]) -> JobParams: ...

    def preset(self, name: str, model: str | None = None) -> dict[str, Any]: ...

    def modes(self, model: str | None = None) -> tuple[str, ...]: ...

    def set_limits(self, limits: LimitSettings) -> None: ...


class JobRunning(Protocol):
    """What the runner needs to make one job's frames: a memory admission, the frames, then cleanup."""

    def admit(self, params: JobParams) -> MemoryAdmission: ...

    def generate(
        self,
        image: Image.Image | None,
        params: JobParams,
        seed: int,
        on_step: ProgressCallback | None = None,
        admission: MemoryAdmission | None = None,
    ) -> GenerationResult: ...

    def after_job(self) -> None: ...

    def unload(self) -> bool: ...


class Generator(RequestRules, JobRunning, Protocol):
    """Both, as the generator factory builds them; the loop also asks which models and LoRA sets are resident
    (to claim jobs for them first) and what was loaded (to log it)."""

    def resident_models(self) -> list[str]: ...

    def resident_loras(self) -> list[str]: ...

    def describe(self) -> dict[str, Any]: ...


class FamilyRules:
    """A model's request rules: its family's defaults, sizes, presets and modes, under the limits."""

    def __init__(
        self,
        *,
        name: str,
        family: Family,
        model: str,
        modes: tuple[str, ...],
        limits: LimitSettings,
        loras: dict[str, LoraSettings] | None = None,
        presets: dict[str, list[PresetSettings]] | None = None,
    ) -> None:
        self.name = name
        self.loras = loras or {}
        self.operator_presets = presets or {}
        self.family = family
        self.model = model
        self.model_modes = modes
        self.set_limits(limits)

    def set_limits(self, limits: LimitSettings) -> None:
        """Bound what a request may ask for; unset limits are the family's own."""
        family_limits = self.family.limits
        self.limits = FamilyLimits(
            max_width=limits.max_width or family_limits.max_width,
            max_height=limits.max_height or family_limits.max_height,
            max_frames=limits.max_frames or family_limits.max_frames,
            max_steps=limits.max_steps or family_limits.max_steps,
        )

    def modes(self, model: str | None = None) -> tuple[str, ...]:
        """What the model makes videos from: image, text or both."""
        self._check_name(model)
        return self.model_modes

    def preset(self, name: str, model: str | None = None) -> dict[str, Any]:
        """The generation fields the family's preset sets (fast, standard, high), under the operator's own
        values for it ([pipeline.presets]: the first entry for this family or model)."""
        self._check_name(model)
        presets = self.family.presets
        if name not in presets:
            raise InputError(
                f"The preset '{name}' does not exist for {self.family.name} models.",
                detail=f"preset={name!r}; {self.family.name} has {', '.join(presets) or 'no presets'}",
                fix=f"Use one of: {', '.join(presets)}.",
            )
        own = next((e.fields() for e in self.operator_presets.get(name, ()) if e.fits(self.family.name, self.name)), {})
        return {**presets[name], **own}

    def resolve(self, requested: dict[str, Any]) -> JobParams:
        """Merge the request over the family's defaults, fit it to the family, check the limits."""
        self._check_name(requested.get("model"))
        defaults = self.family.defaults
        values = {name: requested.get(name) for name in REQUEST_FIELDS}
        mode = requested.get("mode", IMAGE)
        self._check_mode(mode)
        adjustments: list[dict[str, Any]] = []
        if not self.family.uses_prompt:
            if values["prompt"]:
                adjustments.append(
                    {
                        "field": "prompt",
                        "requested": values["prompt"],
                        "used": "",
                        "rule": f"{self.family.name} takes no prompt: the image alone drives the motion",
                    }
                )
            values["prompt"] = values["negative_prompt"] = ""
        elif not values["prompt"]:
            raise InputError(
                "There is no prompt for this image.",
                detail="no 'prompt' in the sidecar, the folder defaults or the settings",
                fix='Add a prompt to the sidecar, for example {"prompt": "slow camera push-in"}.',
            )
        fitted = self.family.fit(
            values["width"] or defaults.width,
            values["height"] or defaults.height,
            values["num_frames"] or defaults.num_frames,
        )
        steps = values["steps"] or defaults.steps
        self.family.check_limits(fitted.width, fitted.height, fitted.num_frames, steps, self.limits)
        loras = [dict(entry) for entry in values["loras"] or ()]
        check_loras(loras, self.loras, family=self.family.name, model=self.name)
        audio = self._audio(values["audio"], values["format"] or defaults.format, adjustments)
        return JobParams(
            prompt=values["prompt"],
            negative_prompt=values["negative_prompt"]
            if values["negative_prompt"] is not None
            else defaults.negative_prompt,
            width=fitted.width,
            height=fitted.height,
            num_frames=fitted.num_frames,
            steps=steps,
            guidance_scale=float(values["guidance_scale"] or defaults.guidance_scale),
            fps=values["fps"] or defaults.fps,
            format=values["format"] or defaults.format,
            seed=values["seed"],
            adjustments=tuple(adjustments + fitted.adjustments),
            mode=mode,
            preset=values["preset"],
            model=self.name,
            loras=tuple({"name": e["name"], "weight": float(e.get("weight", 1.0))} for e in loras),
            audio=audio,
        )

    def _audio(self, asked: bool | None, fmt: str, adjustments: list[dict[str, Any]]) -> bool:
        """Sound where the family makes it and the container holds it; `"audio": true` where it cannot is refused."""
        if asked and not self.family.has_sound:
            raise InputError(
                "This model makes videos without sound.",
                detail=f'"audio": true asked of {self.family.name} (model {self.model}), which makes no sound track',
                fix='Drop "audio" from the sidecar, or ask for a model that makes sound (an ltx2 model).',
            )
        if self.family.has_sound and fmt != "mp4":
            if asked:
                raise InputError(
                    f"A {fmt} file cannot hold sound.",
                    detail=f'"audio": true with "format": "{fmt}"; only mp4 has a sound track',
                    fix='Set "format" to "mp4", or "audio" to false.',
                )
            rule = f"{self.family.name} sound goes into mp4 only; a {fmt} has none"
            adjustments.append({"field": "audio", "requested": None, "used": False, "rule": rule})
            return False
        return self.family.has_sound and asked is not False

    def _check_name(self, model: str | None) -> None:
        if model and model != self.name:
            raise unknown_model(model, [self.name])

    def _check_mode(self, mode: str) -> None:
        if mode in self.model_modes:
            return
        needed = "an image and a prompt file" if mode == TEXT else "a prompt file alone, without an image"
        raise InputError(
            "This model cannot make a video from a prompt alone."
            if mode == TEXT
            else "This model makes videos from a prompt alone; it does not take an image.",
            detail=self.family.rule_for_mode(mode) + f" (model {self.model})",
            fix=f"Drop {needed}, or ask the operator for a model that does this.",
        )


class VideoGenerator:
    """Runs one resident diffusers pipeline; one job at a time, in the memory mode that fits."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        fit: Literal["crop", "pad"],
        limits: LimitSettings,
        memory: MemorySettings | None = None,
        probe: MemoryProbe | None = None,
        reload: Callable[[], LoadedModel] | None = None,
        name: str = DEFAULT_MODEL_NAME,
        loras: dict[str, LoraSettings] | None = None,
        speed: SpeedLevers | None = None,
        presets: dict[str, list[PresetSettings]] | None = None,
    ) -> None:
        """`loaded` may be unloaded (from `inspect_model`): the first job loads it through `reload`.

        `speed`: the levers check_plan passed for this model (pipeline/speed.py); applied at each load."""
        self.name = name
        self.adapters = LoraAdapters(loras or {})
        self.loaded = loaded
        self.family = loaded.family
        self.fit = fit
        self.rules = FamilyRules(
            name=name,
            family=loaded.family,
            model=loaded.model,
            modes=loaded.modes,
            limits=limits,
            loras=loras,
            presets=presets,
        )
        self.memory = memory or MemorySettings()
        self.probe = probe or probe_for(loaded.device)
        # Reloading after an idle unload or a restart: on the same device and dtype; the files are local
        # (or in the hub cache) by now.
        self.reload = reload or (
            lambda: load_model(
                loaded.model, family=loaded.family.name, device=loaded.device, dtype=loaded.dtype, offline=True
            )
        )
        self.forced_mode = self.memory.forced_mode
        self.estimator = MemoryEstimator(
            self.family,
            _footprint(loaded),
            offloads_weights=loaded.device.startswith("cuda"),
            dtype_bytes=DTYPES[loaded.dtype].itemsize,
        )
        self.drift = DriftWatch(
            threshold_bytes=int(self.memory.drift_restart_gb * GB), warmup_jobs=self.memory.warmup_jobs
        )
        self.restart_due: dict[str, int] | None = None
        self._audio_out: Any = None  # the pipeline output's `audio` from the last call (LTX-2)
        self._denoised_at: float | None = None  # when the last call's last step ended (its decode came after)
        self.speed = SpeedPlan(loaded.family.name, speed or SpeedLevers(), loaded.device)
        self._speed_run: JobRun | None = None  # the job now running (its compile fallback, from _call)
        if loaded.pipe is not None:
            self.speed.on_load(loaded.pipe)

    def set_limits(self, limits: LimitSettings) -> None:
        """Bound what a request may ask for; unset limits are the family's own."""
        self.rules.set_limits(limits)

    @property
    def limits(self) -> FamilyLimits:
        return self.rules.limits

    def modes(self, model: str | None = None) -> tuple[str, ...]:
        return self.rules.modes(model)

    def preset(self, name: str, model: str | None = None) -> dict[str, Any]:
        return self.rules.preset(name, model)

    def resolve(self, requested: dict[str, Any]) -> JobParams:
        return self.rules.resolve(requested)

    @property
    def is_loaded(self) -> bool:
        """Whether the model is resident (not unloaded while idle)."""
        return self.loaded.pipe is not None

    def resident_models(self) -> list[str]:
        """This model's name while it is loaded."""
        return [self.name] if self.is_loaded else []

    def resident_loras(self) -> list[str]:
        """The LoRA sets a job may ask for without loading an adapter (while the model is loaded)."""
        return self.adapters.kept_sets() if self.is_loaded else []

    @property
    def weight_bytes(self) -> int:
        """The model's weights (measured once loaded, guessed from its files before)."""
        return self.estimator.footprint.total_bytes

    def describe(self) -> dict[str, Any]:
        """Model, family, device and dtype, for logs and manifests."""
        return {
            "model_name": self.name,
            "model": self.loaded.model,
            "family": self.family.name,
            "device": self.loaded.device,
            "dtype": self.loaded.dtype,
            "load_seconds": round(self.loaded.load_seconds, 3),
            "modes": list(self.loaded.modes),
        }

    def admit(self, params: JobParams) -> MemoryAdmission:
        """The fastest memory mode this job fits in now, or what it has to wait for."""
        resident = weights_on_device(self.loaded.pipe, self.loaded.device) if self.is_loaded else 0
        return choose_mode(
            self.estimator,
            self.probe.snapshot(),
            width=params.width,
            height=params.height,
            frames=params.num_frames,
            resident_now=resident,
            reserve_bytes=int(self.memory.reserve_gb * GB),
            forced=self.forced_mode,
            adapter_bytes=self.adapters.resident_bytes(params.loras, DTYPES[self.loaded.dtype].itemsize),
            lever_bytes=self._lever_bytes(params),
        )

    def _lever_bytes(self, params: JobParams) -> int:
        shape = (params.width, params.height, params.num_frames)
        return self.speed.extra_bytes(
            steps=params.steps, shape=shape, preset=params.preset, dtype_bytes=DTYPES[self.loaded.dtype].itemsize
        )

    def generate(
        self,
        image: Image.Image | None,
        params: JobParams,
        seed: int,
        on_step: ProgressCallback | None = None,
        admission: MemoryAdmission | None = None,
    ) -> GenerationResult:
        """Run the family's call for one job and return uint8 frames with timings and memory facts."""
        timings: dict[str, float] = {}

        # 1. The model on its device (reloaded after an idle unload), and the mode admission chose.
        reload_seconds = self._ensure_loaded()
        lora_facts = self.adapters.apply(self.loaded.pipe, params.loras, model=self.name)
        admission = admission or self.admit(params)
        mode = admission.mode or self.forced_mode or MemoryMode.AS_IS

        # 2. Prepare the image (none for text-to-video): fit to the family's size, keeping the aspect ratio.
        started = time.monotonic()
        size = self.family.image_size(params.width, params.height)
        prepared = None if image is None else fit_image(image, *size, self.fit)
        timings["prepare_seconds"] = time.monotonic() - started

        # 3. Denoise and decode, stepping down the ladder on out-of-memory; every step is recorded.
        usage_before = self.probe.usage()
        floor = usage_before.allocated_bytes if self.loaded.device.startswith("cuda") else usage_before.rss_bytes
        resident = weights_on_device(self.loaded.pipe, self.loaded.device)
        self.probe.reset_peak()
        recovery: list[dict[str, Any]] = []
        started = time.monotonic()
        shape = (params.width, params.height, params.num_frames)
        speed = self._speed_run = self.speed.start_job(
            self.loaded.pipes[params.mode], steps=params.steps, shape=shape, preset=params.preset
        )
        self._denoised_at = None
        try:
            floats, mode = self._run_with_recovery(prepared, params, seed, on_step, mode, recovery, speed)
        finally:
            speed_facts = speed.finish().to_dict()
            reset_mode(self.loaded.pipes[params.mode], self.loaded.device)
        ended = time.monotonic()
        denoised = self._denoised_at or ended  # the last step's end; then the VAE decodes (and the vocoder)
        timings.update(generate_seconds=ended - started, denoise_seconds=denoised - started)
        timings["decode_seconds"] = ended - denoised
        if recovery:
            check_frames(floats)

        # 4. Frames as uint8, the sound fitted to them; what it cost; free what the job left behind.
        frames = _to_uint8(floats)
        del floats
        peak = self.probe.peak_bytes()
        memory_facts = self._memory_facts(
            params,
            admission,
            mode,
            peak=peak,
            floor=floor,
            resident=resident,
            recovery=recovery,
            reload_seconds=reload_seconds,
        )
        return GenerationResult(
            frames=frames,
            sound=self._sound(params, int(frames.shape[0])),
            facts={
                **self.describe(),
                "timings": {name: round(value, 3) for name, value in timings.items()},
                "peak_memory_bytes": peak,
                "memory": memory_facts,
                "loras": lora_facts,
                "speed": speed_facts,
                "frames": int(frames.shape[0]),
                "width": int(frames.shape[2]),
                "height": int(frames.shape[1]),
            },
        )

    def _sound(self, params: JobParams, frames: int) -> SoundTrack | None:
        """The sound track the last call made, if the job keeps it, as long as the video."""
        audio, self._audio_out = self._audio_out, None
        sound = self.family.sound(self.loaded.pipes[params.mode], audio) if params.audio else None
        return None if sound is None else sound.fitted(frames, params.fps)

    def _memory_facts(
        self,
        params: JobParams,
        admission: MemoryAdmission,
        mode: MemoryMode,
        *,
        peak: int,
        floor: int,
        resident: int,
        recovery: list[dict[str, Any]],
        reload_seconds: float | None,
    ) -> dict[str, Any]:
        """What the job cost against its estimate (which learns from it); memory is freed and watched for drift."""
        adapter_bytes = self.adapters.resident_bytes(params.loras, DTYPES[self.loaded.dtype].itemsize)
        lever_bytes = self._lever_bytes(params)
        peak_estimate = self.estimator.peak(
            mode, params.width, params.height, params.num_frames, adapter_bytes, lever_bytes
        )
        estimated_raw = max(0, peak_estimate - resident)
        measured = max(0, peak - floor)
        estimated = int(estimated_raw * self.estimator.calibration)
        self.estimator.record(estimated_raw, measured)
        self.probe.release()
        after = self.probe.usage()
        self.restart_due = self.drift.observe(after)
        return {
            "mode": mode.value,
            "admitted_mode": admission.mode.value if admission.mode else None,
            "forced": self.forced_mode is not None,
            "estimated_bytes": estimated,
            "adapter_bytes": adapter_bytes,
            "lever_bytes": lever_bytes,  # working memory the speed levers add to the estimate (FasterCache's)
            "measured_bytes": measured,
            "peak_bytes": peak,
            "free_bytes_at_start": admission.snapshot.free_bytes,
            "recovery": recovery,
            "reload_seconds": round(reload_seconds, 3) if reload_seconds is not None else None,
            "after_job": after.to_dict(),
        }

    def after_job(self) -> None:
        """Once the outputs are safe: restart the worker if memory after jobs drifted past the threshold."""
        if self.restart_due is None:
            return
        log.warning(
            "worker_restarting", reason="memory_drift", **self.restart_due, threshold_bytes=self.drift.threshold_bytes
        )
        self.restart_due = None
        self.unload()
        self._ensure_loaded()
        self.drift.restart()

    def unload(self) -> bool:
        """Give the device's memory back (idle timeout); the next job loads the model again."""
        if not self.is_loaded:
            return False
        # Every reference goes (the image and text pipelines share components); the modes stay known.
        self.loaded = replace(self.loaded, pipe=None, pipes={mode: None for mode in self.loaded.modes})
        self.adapters.forget()
        self.probe.release()
        log.info("model_unloaded", device=self.loaded.device, **self.probe.usage().to_dict())
        return True

    def _ensure_loaded(self) -> float | None:
        if self.is_loaded:
            return None
        started = time.monotonic()
        self.adapters.forget()
        self.loaded = self.reload()
        seconds = time.monotonic() - started
        self.estimator.footprint = ModelFootprint.of_pipeline(self.loaded.pipe)
        self.speed.on_load(self.loaded.pipe)
        log.info("model_reloaded", model=self.name, reload_ms=round(seconds * 1000), device=self.loaded.device)
        return seconds

    def load(self) -> float | None:
        """Load the model now if it is not resident; the seconds it took, or None if it already was."""
        return self._ensure_loaded()

    def _run_with_recovery(
        self,
        image: Image.Image | None,
        params: JobParams,
        seed: int,
        on_step: ProgressCallback | None,
        mode: MemoryMode,
        recovery: list[dict[str, Any]],
        speed: JobRun,
    ) -> tuple[np.ndarray, MemoryMode]:
        """Run in `mode`; on out-of-memory release everything, drop the memory-hungry speed levers, go one rung
        down and retry the same seed.

        Where the family can decode latents separately, the latents are kept, so a decode that runs out
        of memory re-runs only the decode. No mode is tried twice.
        """
        pipe, device = self.loaded.pipes[params.mode], self.loaded.device
        latents: Any = None
        decode_rng: torch.Tensor | None = None
        while True:
            apply_mode(pipe, mode, device)
            speed.enter(mode)
            phase = "denoise" if latents is None else "decode"
            try:
                if not self.family.can_decode_latents:
                    return self._call(image, params, seed, on_step, mode, output_type="np")[0], mode
                if latents is None:
                    latents, decode_rng = self._call(image, params, seed, on_step, mode, output_type="latent")
                phase = "decode"
                return self._decode(latents, decode_rng, params, mode), mode
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc):
                    raise GenerationError(
                        "The model failed while making this video.",
                        detail=f"{type(exc).__name__}: {exc}",
                        fix=TRY_AGAIN_FIX,
                    ) from exc
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            # Out of the except block: the traceback and the tensors its frames held are gone now.
            lower = mode.next_down()
            step = {
                "phase": phase,
                "mode": mode.value,
                "error": error,
                "next_mode": lower.value if lower else None,
                "kept_latents": latents is not None,
            }
            recovery.append(step)
            log.warning("memory_recovery", **step)
            speed.drop_memory_levers(error)
            reset_mode(pipe, device)
            self.probe.release()
            if lower is None:
                raise GenerationError(
                    "The GPU ran out of memory while making this video, even in the leanest memory mode.",
                    detail=f"tried {', '.join(s['mode'] for s in recovery)}; last error {error}",
                    fix="Ask for fewer frames or a smaller size, or free GPU memory used by other programs.",
                )
            mode = lower

    def _call(
        self,
        image: Image.Image | None,
        params: JobParams,
        seed: int,
        on_step: ProgressCallback | None,
        mode: MemoryMode,
        *,
        output_type: str,
    ) -> tuple[Any, torch.Tensor]:
        # A seeded CPU generator, so the same seed gives the same video on any device and on every retry.
        # Some pipelines also draw from the global RNG (I2VGen-XL samples its image latents there).
        generator = torch.Generator(device="cpu").manual_seed(seed)
        torch.manual_seed(seed)
        callback = _StepReporter(
            params.steps, on_step, per_step=self.family.denoiser_calls_per_step(params.guidance_scale)
        )
        self.family.configure(self.loaded.pipes[params.mode], guidance_scale=params.guidance_scale)
        arguments = self.family.call_arguments(
            image=image,
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            width=params.width,
            height=params.height,
            num_frames=params.num_frames,
            steps=params.steps,
            guidance_scale=params.guidance_scale,
            fps=params.fps,
            generator=generator,
            callback=callback,
        )
        arguments.update(self.family.memory_arguments(mode), output_type=output_type)
        hook = None if self.family.has_step_callback else self._denoiser().register_forward_hook(callback.as_hook)
        try:
            with torch.inference_mode():
                result = self.loaded.pipes[params.mode](**arguments)
            self._denoised_at = callback.last_step_at
        except COMPILE_ERRORS as exc:  # compiled code that cannot run: the job again, uncompiled (the manifest says)
            if self._speed_run is None or not self._speed_run.compile_failed(exc):
                raise
            return self._call(image, params, seed, on_step, mode, output_type=output_type)
        finally:
            if hook is not None:
                hook.remove()
        output, self._audio_out = result.frames, getattr(result, "audio", None)  # LTX-2's sound
        return (output if output_type == "latent" else output[0]), generator.get_state()

    def _decode(self, latents: Any, rng_state: torch.Tensor, params: JobParams, mode: MemoryMode) -> np.ndarray:
        generator = torch.Generator(device="cpu")
        generator.set_state(rng_state)  # a retried decode draws the same noise as the first try
        with torch.inference_mode():
            return self.family.decode_latents(
                self.loaded.pipes[params.mode],
                latents,
                width=params.width,
                height=params.height,
                num_frames=params.num_frames,
                generator=generator,
                mode=mode,
            )

    def _denoiser(self) -> torch.nn.Module:
        pipe = self.loaded.pipe
        return getattr(pipe, "transformer", None) or pipe.unet


class _StepReporter:
    """Turns diffusers' callback_on_step_end (or a forward hook on the denoiser) into on_step(step, total)."""

    def __init__(self, total: int, on_step: ProgressCallback | None, per_step: int = 1) -> None:
        self.total = total
        self.on_step = on_step
        self.per_step = per_step  # denoiser calls per step (a guider's conditions), for the hook
        self.calls = 0
        self.last_step_at: float | None = None  # monotonic time the last step (and its report) ended

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        self._report(step + 1)
        return callback_kwargs

    def as_hook(self, module: Any, inputs: Any, output: Any) -> None:
        self.calls += 1
        if self.calls % self.per_step == 0:
            self._report(min(self.calls // self.per_step, self.total))

    def _report(self, step: int) -> None:
        if self.on_step is not None:
            self.on_step(step, self.total)
        self.last_step_at = time.monotonic()


def unknown_model(model: str, offered: list[str]) -> InputError:
    """A request named a model the operator does not offer."""
    return InputError(
        f"The model '{model}' is not one of the models this vidrop offers.",
        detail=f"model={model!r}; offered: {', '.join(offered)}",
        fix=f'Set "model" to one of: {", ".join(offered)} (or leave it out for the default), '
        "or ask the operator to add the model.",
    )


def _footprint(loaded: LoadedModel) -> ModelFootprint:
    if loaded.pipe is not None:
        return ModelFootprint.of_pipeline(loaded.pipe)
    folder = Path(loaded.model).expanduser()
    return ModelFootprint.of_files(folder) if folder.is_dir() else ModelFootprint(0, 0, 0)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError, or the RuntimeError some CUDA paths (and the CPU allocator) raise instead."""
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )


def check_frames(frames: np.ndarray) -> None:
    """Refuse frames a failed-and-recovered run may leave: NaN, or every frame the same."""
    if np.isnan(frames).any():
        raise GenerationError(
            "The model produced broken frames (not-a-number values).",
            detail=f"NaN in {int(np.isnan(frames).sum())} values of {frames.shape}",
            fix=TRY_AGAIN_FIX,
        )
    if frames.shape[0] > 1 and np.array_equal(frames.min(axis=0), frames.max(axis=0)):
        raise GenerationError(
            "The model produced a video whose frames are all the same.",
            detail=f"{frames.shape[0]} identical frames",
            fix=TRY_AGAIN_FIX,
        )


def _to_uint8(frames: Any) -> np.ndarray:
    array = np.asarray(frames, dtype=np.float32)
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
