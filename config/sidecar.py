"""The sidecar JSON a designer drops next to an image: its fields, aliases and limits.

`Sidecar` is also the source of `vidrop schema`, so design tools can validate before they drop.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

SEED_MAX = 2**32 - 1
FPS_RANGE = (4, 30)
GUIDANCE_RANGE = (1.0, 20.0)


class SidecarError(ValueError):
    """A sidecar that cannot be used: `reason` is one sentence a designer understands."""

    def __init__(self, reason: str, detail: str, fix: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.fix = fix


PRESETS = ("fast", "standard", "high")
MAX_VARIANTS = 16


class _Generation(BaseModel):
    """The generation fields a sidecar, and each of its variants, may set."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    prompt: str | None = Field(None, max_length=4000, description="what should happen in the video")
    negative_prompt: str | None = Field(None, max_length=4000, description="what to avoid")
    num_frames: int | None = Field(
        None, ge=1, validation_alias=AliasChoices("num_frames", "frame_count"), description="frames in the video"
    )
    fps: int | None = Field(None, ge=FPS_RANGE[0], le=FPS_RANGE[1], description="frames per second")
    steps: int | None = Field(
        None,
        ge=1,
        validation_alias=AliasChoices("steps", "num_inference_steps"),
        description="denoising steps: more is slower and finer",
    )
    guidance_scale: float | None = Field(
        None, ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1], description="how closely to follow the prompt"
    )
    width: int | None = Field(None, ge=8, description="video width in pixels")
    height: int | None = Field(None, ge=8, description="video height in pixels")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="same seed, same video; absent: random")
    format: Literal["mp4", "gif", "webp"] | None = Field(None, description="video container")
    model: str | None = Field(
        None, max_length=64, description="which of the models on offer makes it (`vidrop check` lists them); "
        "absent: the default model"
    )
    preset: Literal[PRESETS] | None = Field(
        None, description="the family's steps, frames, size and guidance for fast, standard or high quality; "
        "fields set explicitly win"
    )


class Variant(_Generation):
    """One more result from the same sidecar: its own job, its outputs named `<stem><suffix>`."""

    suffix: str = Field(..., pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="added to the output names")
    prompt_add: str | None = Field(None, max_length=4000, description="appended to the prompt")


class Sidecar(_Generation):
    """What one image should become. Every field is optional; unset fields take the defaults."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        title="vidrop sidecar",
        json_schema_extra={
            "description": "Put NAME.json next to NAME.png in the inbox (or NAME.json alone for a text-to-video "
            "model). Unknown keys are refused. "
            "Aliases accepted: num_inference_steps for steps, frame_count for num_frames. "
            "A _defaults.json with the same fields applies to every image in its folder and below; "
            "{stem} and {folder} in a prompt become the image's name and its folder's name."
        },
    )

    priority: int | None = Field(None, ge=-1000, le=1000, description="higher runs first; default 0")
    seeds: list[int] | None = Field(
        None, min_length=1, max_length=MAX_VARIANTS, description="one video per seed, named <stem>_seed<N>"
    )
    variants: list[Variant] | None = Field(
        None, min_length=1, max_length=MAX_VARIANTS, description="several results of one shot, each its own job"
    )

    @field_validator("seeds")
    @classmethod
    def _seeds_in_range(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None:
            for seed in seeds:
                if not 0 <= seed <= SEED_MAX:
                    raise ValueError(f"seed {seed} is outside 0..{SEED_MAX}")
            if len(set(seeds)) != len(seeds):
                raise ValueError("seeds repeat")
        return seeds

    @field_validator("variants")
    @classmethod
    def _suffixes_unique(cls, variants: list[Variant] | None) -> list[Variant] | None:
        if variants is not None and len({variant.suffix for variant in variants}) != len(variants):
            raise ValueError("two variants have the same suffix")
        return variants


def sidecar_schema() -> dict[str, Any]:
    """The JSON Schema published by `vidrop schema`."""
    return Sidecar.model_json_schema(mode="validation")


def parse_sidecar(raw: bytes, *, max_bytes: int) -> Sidecar:
    """Parse and validate sidecar bytes, or raise SidecarError that names the key and the value."""
    if len(raw) > max_bytes:
        raise SidecarError(
            "The prompt file is too large.",
            f"sidecar is {len(raw)} bytes; the limit is {max_bytes}",
            "Keep the sidecar to the prompt and a few settings.",
        )
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SidecarError(
            "The prompt file is not valid JSON.",
            str(exc),
            'Save it as JSON, for example {"prompt": "slow zoom on the product"}.',
        ) from None
    if not isinstance(data, dict):
        raise SidecarError(
            "The prompt file must hold a JSON object.",
            f"top-level value is {type(data).__name__}",
            'Wrap the settings in braces, for example {"prompt": "slow zoom on the product"}.',
        )
    try:
        return Sidecar.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc) from None


def _explain(exc: ValidationError) -> SidecarError:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "sidecar"
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()
    )
    if first["type"] == "extra_forbidden":
        known = ", ".join(sorted(Sidecar.model_fields))
        return SidecarError(
            f"The prompt file has a setting vidrop does not know: '{key}'.",
            detail,
            f"Remove or rename '{key}'. Known settings: {known}.",
        )
    return SidecarError(
        f"The prompt file's '{key}' cannot be used: {first['msg']}.",
        detail,
        f"Change '{key}' and drop the file again; `vidrop schema` lists every setting and its range.",
    )
