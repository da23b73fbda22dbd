"""What a model family accepts and how it is called: one small class per family."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
from PIL import Image

from vidrop.config.errors import InputError
from vidrop.config.request import Preset, VideoFormat

StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class FamilyDefaults:
    """Generation parameters a family uses when nobody asked for anything else (request fields, with values)."""

    width: int
    height: int
    num_frames: int
    steps: int
    guidance_scale: float
    fps: int
    negative_prompt: str = ""
    format: VideoFormat = "mp4"


@dataclass(frozen=True)
class FamilyLimits:
    """The largest request a family supports."""

    max_width: int
    max_height: int
    max_frames: int
    max_steps: int = 150


@dataclass
class FittedSize:
    """A request's size and frame count after fitting them to the family's rules."""

    width: int
    height: int
    num_frames: int
    adjustments: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class SoundTrack:
    """The sound a model made with a video: float samples in [-1, 1], channels × samples, at sample_rate."""

    samples: np.ndarray
    sample_rate: int
    generated_samples: int = 0  # what the model made, before `fitted` padded or cut it; 0: not fitted

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def sample_count(self) -> int:
        return int(self.samples.shape[1])

    def fitted(self, frames: int, fps: int) -> SoundTrack:
        """Exactly the video's duration: silence added at the end, or the end cut (the vocoder's output runs a
        few milliseconds short or long of frames/fps)."""
        target = round(frames * self.sample_rate / fps)
        samples = self.samples[:, :target]
        if samples.shape[1] < target:
            samples = np.pad(samples, ((0, 0), (0, target - samples.shape[1])))
        return SoundTrack(np.ascontiguousarray(samples), self.sample_rate, generated_samples=self.sample_count)


IMAGE = "image"
TEXT = "text"


class Family:
    """Base for model families. Subclasses set the class attributes and `call_arguments`."""

    name: ClassVar[str]
    pipeline_class_names: ClassVar[tuple[str, ...]]
    # The diffusers classes that make a video from an image and from text alone (None: the family cannot).
    image_pipeline_class_name: ClassVar[str | None] = None
    text_pipeline_class_name: ClassVar[str | None] = None
    # Whether one checkpoint does both (LTX-Video); otherwise a checkpoint does what its model_index says.
    shares_components: ClassVar[bool] = False
    size_multiple: ClassVar[int]
    defaults: ClassVar[FamilyDefaults]
    limits: ClassVar[FamilyLimits]
    # preset name → the generation fields it sets; explicit fields in a request win over these.
    presets: ClassVar[dict[Preset, dict[str, Any]]] = {}
    gpu_dtype: ClassVar[str] = "bfloat16"
    # Whether __call__ takes callback_on_step_end; otherwise progress comes from a hook on the denoiser.
    has_step_callback: ClassVar[bool] = True
    # Whether the model reads a prompt at all (Stable Video Diffusion does not).
    uses_prompt: ClassVar[bool] = True
    # Frame counts the family produces are frame_step·k + 1 (temporal compression of its VAE); 1: any.
    frame_step: ClassVar[int] = 1
    # Why the family is deprecated (logged as model_family_deprecated when loaded); None: current.
    deprecated: ClassVar[str | None] = None
    # Whether the model makes a sound track with the video (LTX-2); a request may then ask for none.
    has_sound: ClassVar[bool] = False

    @classmethod
    def matches(cls, index: dict[str, Any]) -> bool:
        """Whether a checkpoint's model_index.json is of this family (its pipeline class, by default)."""
        return index.get("_class_name") in cls.pipeline_class_names

    def pipeline_classes(self, class_name: str | None) -> dict[str, str]:
        """Mode (image/text) → the diffusers class that runs it, for a checkpoint declaring `class_name`."""
        both = {IMAGE: self.image_pipeline_class_name, TEXT: self.text_pipeline_class_name}
        both = {mode: name for mode, name in both.items() if name}
        if self.shares_components or class_name is None:
            return both
        return {mode: name for mode, name in both.items() if name == class_name}

    def bind(self, pipe: Any) -> None:
        """Learn what the loaded checkpoint itself fixes (a built-in resolution, for example)."""

    def bind_configs(self, configs: dict[str, dict[str, Any]]) -> None:
        """The same from the components' config.json files (component → config), before the model is loaded:
        a model on offer that is not loaded yet still resolves requests by its own rules."""

    def rule_for_mode(self, mode: str) -> str:
        """Why a mode is refused, in words."""
        if mode == TEXT:
            return f"this {self.name} model makes videos from an image; it cannot start from a prompt alone"
        return f"this {self.name} model makes videos from a prompt alone; it does not take an image"

    # Memory per output voxel (width × height × frame) at a 2-byte dtype, beyond the weights: while denoising,
    # and while the VAE decodes every frame at once. Rough starting points; measured peaks calibrate them.
    denoise_bytes_per_voxel: ClassVar[float] = 64.0
    decode_bytes_per_voxel: ClassVar[float] = 256.0
    # Frames the VAE decodes at once in the tiled modes (its temporal tile, or the decode chunk).
    tiled_decode_frames: ClassVar[int] = 8
    # Whether the pipeline can stop at latents and `decode_latents` finish the job: a decode OOM then
    # re-runs only the decode, not minutes of denoising.
    can_decode_latents: ClassVar[bool] = False

    def fit_frames(self, num_frames: int) -> int:
        """The frame count this family will really produce for a requested one (rounded up to step·k+1)."""
        if self.frame_step == 1:
            return num_frames
        step = self.frame_step
        return ((max(num_frames, 1) - 1 + step - 1) // step) * step + 1

    def fit(self, width: int, height: int, num_frames: int) -> FittedSize:
        """Round a request to what the family accepts, recording each change for the manifest."""
        fitted = FittedSize(
            width=_round_to_multiple(width, self.size_multiple),
            height=_round_to_multiple(height, self.size_multiple),
            num_frames=self.fit_frames(num_frames),
        )
        for name, asked in (("width", width), ("height", height), ("num_frames", num_frames)):
            got = getattr(fitted, name)
            if got != asked:
                fitted.adjustments.append({"field": name, "requested": asked, "used": got, "rule": self.rule(name)})
        return fitted

    def rule(self, name: str) -> str:
        """The family's rule for a field, in words, for manifests and error messages."""
        if name in ("width", "height"):
            return f"{self.name} needs {name} in multiples of {self.size_multiple}"
        if self.frame_step == 1:
            return f"{self.name} accepts any frame count"
        step = self.frame_step
        return f"{self.name} needs {step}k+1 frames ({step + 1}, {2 * step + 1}, {3 * step + 1}, ...)"

    def check_limits(self, width: int, height: int, num_frames: int, steps: int, limits: FamilyLimits) -> None:
        """Refuse a request beyond the limits with an error that names the field and the value."""
        for name, value, top in (
            ("width", width, limits.max_width),
            ("height", height, limits.max_height),
            ("num_frames", num_frames, limits.max_frames),
            ("steps", steps, limits.max_steps),
        ):
            if value > top:
                raise InputError(
                    f"The requested {name} ({value}) is more than this server allows ({top}).",
                    detail=f"{name}={value} exceeds limit {top} for family {self.name}",
                    fix=f"Set '{name}' to {top} or less in the sidecar.",
                )
            minimum = self.size_multiple if name in ("width", "height") else 1
            if value < minimum:
                raise InputError(
                    f"The requested {name} ({value}) is too small for this model.",
                    detail=f"{name}={value} is below {minimum} for family {self.name}",
                    fix=f"Set '{name}' to at least {minimum}.",
                )

    def call_arguments(
        self,
        *,
        image: Image.Image | None,
        prompt: str,
        negative_prompt: str,
        width: int,
        height: int,
        num_frames: int,
        steps: int,
        guidance_scale: float,
        fps: int,
        generator: Any,
        callback: StepCallback,
    ) -> dict[str, Any]:
        """The keyword arguments of the diffusers pipeline's __call__ for one job (image None: from text)."""
        arguments = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "width": width,
            "height": height,
            "num_frames": num_frames,
            "num_inference_steps": steps,
            "guidance_scale": guidance_scale,
            "generator": generator,
            "output_type": "np",
            "callback_on_step_end": callback,
        }
        if image is not None:
            arguments["image"] = image
        return arguments

    def sound(self, pipe: Any, audio: Any) -> SoundTrack | None:
        """The sound track in the pipeline's output (its `audio`); None for families without sound."""
        return None

    def image_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) the image is fitted to for a job of this size (the size itself by default)."""
        return width, height

    def configure(self, pipe: Any, *, guidance_scale: float) -> None:
        """Set on the pipeline what its __call__ does not take (HunyuanVideo 1.5's guider); nothing by default."""

    def denoiser_calls_per_step(self, guidance_scale: float) -> int:
        """Forward calls of the denoiser per step, for progress from a hook (has_step_callback False)."""
        return 1

    def memory_arguments(self, mode: Any) -> dict[str, Any]:
        """Extra __call__ arguments for a memory mode (a smaller decode chunk, say); none by default."""
        return {}

    def decode_latents(
        self, pipe: Any, latents: Any, *, width: int, height: int, num_frames: int, generator: Any, mode: Any
    ) -> Any:
        """Frames (float, frames × height × width × 3 in [0, 1]) from what __call__ gave with output_type="latent"."""
        raise NotImplementedError(f"{self.name} cannot decode latents separately")


def _round_to_multiple(value: int, multiple: int) -> int:
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)
