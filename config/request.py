"""The request vocabulary: the generation fields, their limits and the names they take, declared once.

`GenerationFields` is what the settings' [generation] defaults may set; `RequestFields` adds what only a
request sets (its seed, its model) and the aliases sidecars accept. The sidecar model (config/sidecar.py),
the settings (config/settings.py) and the pipeline's job parameters (pipeline/generate.py) build on them.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import AliasChoices, AliasGenerator, BaseModel, ConfigDict, Field

SEED_MAX = 2**32 - 1
FPS_RANGE = (4, 30)
GUIDANCE_RANGE = (1.0, 20.0)
VIDEO_FORMATS = ("mp4", "gif", "webp")
# Every family defines its steps, frames, size and guidance for each of these (pipeline/families).
PRESETS = ("fast", "standard", "high")
VideoFormat = Literal[VIDEO_FORMATS]
Preset = Literal[PRESETS]
# Names common web APIs use for a field, accepted in sidecars (not in the settings).
ALIASES = {"steps": ("num_inference_steps",), "num_frames": ("frame_count",)}
LORA_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_LORAS = 8


class LoraRequest(BaseModel):
    """One LoRA a request asks for, by its name in the settings' [pipeline.loras], at a weight."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=LORA_NAME_PATTERN, description="a LoRA offered in the settings")
    weight: float = Field(1.0, ge=-10.0, le=10.0, description="how strongly it applies; the LoRA's range decides")


class GenerationFields(BaseModel):
    """The generation fields a sidecar, a folder's `_defaults.json` and the settings' defaults may set."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, max_length=4000, description="what should happen in the video")
    negative_prompt: str | None = Field(None, max_length=4000, description="what to avoid")
    num_frames: int | None = Field(None, ge=1, description="frames in the video")
    fps: int | None = Field(None, ge=FPS_RANGE[0], le=FPS_RANGE[1], description="frames per second")
    steps: int | None = Field(None, ge=1, description="denoising steps: more is slower and finer")
    guidance_scale: float | None = Field(
        None, ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1], description="how closely to follow the prompt"
    )
    width: int | None = Field(None, ge=8, description="video width in pixels")
    height: int | None = Field(None, ge=8, description="video height in pixels")
    format: VideoFormat | None = Field(None, description="video container")
    preset: Preset | None = Field(
        None,
        description="the family's steps, frames, size and guidance for fast, standard or high quality; "
        "fields set explicitly win",
    )
    loras: list[LoraRequest] | None = Field(
        None, max_length=MAX_LORAS, description="LoRAs to apply, by name (`vidrop check` lists them), with weights"
    )
    audio: bool | None = Field(
        None,
        description="keep the sound track a model with sound makes (LTX-2; on by default there); false: a silent "
        "video; true is refused for a model without sound",
    )


def _aliases(name: str) -> AliasChoices | None:
    return AliasChoices(name, *ALIASES[name]) if name in ALIASES else None


class RequestFields(GenerationFields):
    """The fields one request (a sidecar, or one of its variants) may set: the generation fields, its seed
    and its model. Every field is optional; unset fields take the defaults."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=AliasGenerator(validation_alias=_aliases)
    )
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="same seed, same video; absent: random")
    model: str | None = Field(
        None,
        max_length=64,
        description="which of the models on offer makes it (`vidrop check` lists them); absent: the default model",
    )


REQUEST_FIELDS = tuple(RequestFields.model_fields)


def lora_set(loras: Sequence[dict[str, Any]]) -> str:
    """A job's LoRAs as one key (the ledger's `loras` column): their names, sorted, joined by commas."""
    return ",".join(sorted(entry["name"] for entry in loras))
