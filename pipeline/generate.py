"""The generator: resolve a request against the family, prepare the image, call the model, collect facts."""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Protocol

import numpy as np
import torch
from PIL import Image

from config.settings import LimitSettings
from pipeline.errors import GenerationError, InputError
from pipeline.families.base import FamilyLimits
from pipeline.images import fit_image
from pipeline.loader import LoadedModel

ProgressCallback = Callable[[int, int], None]

REQUEST_FIELDS = ("prompt", "negative_prompt", "width", "height", "num_frames", "steps", "guidance_scale", "fps",
                  "format", "seed")
IMAGE, TEXT = "image", "text"


@dataclass(frozen=True)
class JobParams:
    """The effective parameters of one job, after defaults, fitting and limits."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    steps: int
    guidance_scale: float
    fps: int
    format: Literal["mp4", "gif", "webp"]
    seed: int | None
    adjustments: tuple[dict[str, Any], ...] = ()
    mode: Literal["image", "text"] = IMAGE  # text: no image, the prompt alone
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the ledger and the manifest."""
        data = asdict(self)
        data["adjustments"] = list(self.adjustments)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobParams:
        """The inverse of to_dict (keys that are not parameters, such as a variant's suffix, are left out)."""
        known = {name: value for name, value in data.items() if name in cls.__dataclass_fields__}
        return cls(**{**known, "adjustments": tuple(data.get("adjustments", ()))})


@dataclass
class GenerationResult:
    """Frames (uint8, frames × height × width × 3) and the facts the manifest records."""

    frames: np.ndarray
    facts: dict[str, Any] = field(default_factory=dict)


class Generator(Protocol):
    """What the runner needs from a model: tests may pass their own."""

    def resolve(self, requested: dict[str, Any]) -> JobParams: ...

    def preset(self, name: str) -> dict[str, Any]: ...

    def generate(self, image: Image.Image | None, params: JobParams, seed: int,
                 on_step: ProgressCallback | None = None) -> GenerationResult: ...

    def describe(self) -> dict[str, Any]: ...


class VideoGenerator:
    """Runs one resident diffusers pipeline; one job at a time."""

    def __init__(self, loaded: LoadedModel, *, fit: Literal["crop", "pad"], limits: LimitSettings) -> None:
        self.loaded = loaded
        self.family = loaded.family
        self.fit = fit
        family_limits = self.family.limits
        self.limits = FamilyLimits(
            max_width=limits.max_width or family_limits.max_width,
            max_height=limits.max_height or family_limits.max_height,
            max_frames=limits.max_frames or family_limits.max_frames,
            max_steps=limits.max_steps or family_limits.max_steps,
        )

    def describe(self) -> dict[str, Any]:
        """Model, family, device and dtype, for logs and manifests."""
        return {
            "model": self.loaded.model,
            "family": self.family.name,
            "device": self.loaded.device,
            "dtype": self.loaded.dtype,
            "load_seconds": round(self.loaded.load_seconds, 3),
            "modes": list(self.loaded.modes),
        }

    def preset(self, name: str) -> dict[str, Any]:
        """The generation fields the family's preset sets (fast, standard, high)."""
        presets = self.family.presets
        if name not in presets:
            raise InputError(
                f"The preset '{name}' does not exist for {self.family.name} models.",
                detail=f"preset={name!r}; {self.family.name} has {', '.join(presets) or 'no presets'}",
                fix=f"Use one of: {', '.join(presets)}.",
            )
        return dict(presets[name])

    def resolve(self, requested: dict[str, Any]) -> JobParams:
        """Merge the request over the family's defaults, fit it to the family, check the limits."""
        defaults = self.family.defaults
        values = {name: requested.get(name) for name in REQUEST_FIELDS}
        mode = requested.get("mode", IMAGE)
        self._check_mode(mode)
        adjustments: list[dict[str, Any]] = []
        if not self.family.uses_prompt:
            if values["prompt"]:
                adjustments.append({"field": "prompt", "requested": values["prompt"], "used": "",
                                    "rule": f"{self.family.name} takes no prompt: the image alone drives the motion"})
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
        return JobParams(
            prompt=values["prompt"],
            negative_prompt=values["negative_prompt"] if values["negative_prompt"] is not None
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
            preset=requested.get("preset"),
        )

    def _check_mode(self, mode: str) -> None:
        if mode in self.loaded.modes:
            return
        needed = "an image and a prompt file" if mode == TEXT else "a prompt file alone, without an image"
        raise InputError(
            "This model cannot make a video from a prompt alone." if mode == TEXT
            else "This model makes videos from a prompt alone; it does not take an image.",
            detail=self.family.rule_for_mode(mode) + f" (model {self.loaded.model})",
            fix=f"Drop {needed}, or ask the operator for a model that does this.",
        )

    def generate(self, image: Image.Image | None, params: JobParams, seed: int,
                 on_step: ProgressCallback | None = None) -> GenerationResult:
        """Run the family's call for one job and return uint8 frames with timings and peak memory."""
        timings: dict[str, float] = {}

        # 1. Prepare the image (none for text-to-video): fit to the family's size, keeping the aspect ratio.
        started = time.monotonic()
        prepared = None if image is None else fit_image(image, params.width, params.height, self.fit)
        timings["prepare_seconds"] = time.monotonic() - started

        # 2. Arguments: a seeded CPU generator, so the same seed gives the same video on any device.
        #    Some pipelines also draw from the global RNG (I2VGen-XL samples its image latents there).
        generator = torch.Generator(device="cpu").manual_seed(seed)
        torch.manual_seed(seed)
        callback = _StepReporter(params.steps, on_step)
        arguments = self.family.call_arguments(
            image=prepared, prompt=params.prompt, negative_prompt=params.negative_prompt, width=params.width,
            height=params.height, num_frames=params.num_frames, steps=params.steps,
            guidance_scale=params.guidance_scale, fps=params.fps, generator=generator, callback=callback,
        )

        # 3. Denoise and decode, reporting every step.
        self._reset_peak_memory()
        started = time.monotonic()
        hook = None if self.family.has_step_callback else self._denoiser().register_forward_hook(callback.as_hook)
        try:
            with torch.inference_mode():
                output = self.loaded.pipes[params.mode](**arguments)
        except torch.OutOfMemoryError as exc:
            raise GenerationError(
                "The GPU ran out of memory while making this video.",
                detail=f"OutOfMemoryError: {exc}",
                fix="Ask for fewer frames or a smaller size, or free GPU memory used by other programs.",
            ) from None
        except RuntimeError as exc:
            raise GenerationError("The model failed while making this video.", detail=f"RuntimeError: {exc}",
                                  fix="Try again; if it keeps failing, send the error file to the operator.") from exc
        finally:
            if hook is not None:
                hook.remove()
        timings["generate_seconds"] = time.monotonic() - started

        # 4. Frames as uint8 and the facts.
        frames = _to_uint8(output.frames[0])
        return GenerationResult(
            frames=frames,
            facts={
                **self.describe(),
                "timings": {name: round(value, 3) for name, value in timings.items()},
                "peak_memory_bytes": self._peak_memory(),
                "frames": int(frames.shape[0]),
                "width": int(frames.shape[2]),
                "height": int(frames.shape[1]),
            },
        )

    def _denoiser(self) -> torch.nn.Module:
        pipe = self.loaded.pipe
        return getattr(pipe, "transformer", None) or pipe.unet

    def _reset_peak_memory(self) -> None:
        if self.loaded.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.loaded.device)

    def _peak_memory(self) -> int:
        if self.loaded.device.startswith("cuda"):
            return int(torch.cuda.max_memory_allocated(self.loaded.device))
        # On the CPU: the process's peak resident set (ru_maxrss is in KiB on Linux).
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class _StepReporter:
    """Turns diffusers' callback_on_step_end (or a forward hook on the denoiser) into on_step(step, total)."""

    def __init__(self, total: int, on_step: ProgressCallback | None) -> None:
        self.total = total
        self.on_step = on_step
        self.calls = 0

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        self._report(step + 1)
        return callback_kwargs

    def as_hook(self, module: Any, inputs: Any, output: Any) -> None:
        self.calls += 1
        self._report(min(self.calls, self.total))

    def _report(self, step: int) -> None:
        if self.on_step is not None:
            self.on_step(step, self.total)


def _to_uint8(frames: Any) -> np.ndarray:
    array = np.asarray(frames, dtype=np.float32)
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
