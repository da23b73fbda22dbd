"""What a model family accepts and how it is called: one small class per family."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from PIL import Image

from pipeline.errors import InputError

StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class FamilyDefaults:
    """Generation parameters a family uses when nobody asked for anything else."""

    width: int
    height: int
    num_frames: int
    steps: int
    guidance_scale: float
    fps: int
    negative_prompt: str = ""


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


class Family:
    """Base for model families. Subclasses set the class attributes and `call_arguments`."""

    name: ClassVar[str]
    pipeline_class_names: ClassVar[tuple[str, ...]]
    # The diffusers class vidrop loads: a text-to-video checkpoint of the same family shares its components.
    image_pipeline_class_name: ClassVar[str]
    size_multiple: ClassVar[int]
    defaults: ClassVar[FamilyDefaults]
    limits: ClassVar[FamilyLimits]
    gpu_dtype: ClassVar[str] = "bfloat16"
    # Whether __call__ takes callback_on_step_end; otherwise progress comes from a hook on the denoiser.
    has_step_callback: ClassVar[bool] = True

    def fit_frames(self, num_frames: int) -> int:
        """The frame count this family will really produce for a requested one."""
        return num_frames

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
        return f"{self.name} accepts any frame count"

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
        image: Image.Image,
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
        """The keyword arguments of the diffusers pipeline's __call__ for one job."""
        raise NotImplementedError


def _round_to_multiple(value: int, multiple: int) -> int:
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)
