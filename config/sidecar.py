"""The sidecar JSON a designer drops next to an image: the request fields (config/request.py) and what
only a sidecar sets (its priority, seeds and variants).

`Sidecar` is also the source of `vidrop schema`, so design tools can validate before they drop.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, field_validator

from vidrop.config.errors import SidecarError
from vidrop.config.request import ALIASES, SEED_MAX, RequestFields

MAX_VARIANTS = 16
# The smallest sidecar worth showing in a fix.
EXAMPLE = '{"prompt": "slow zoom on the product"}'


class Variant(RequestFields):
    """One more result from the same sidecar: its own job, its outputs named `<stem><suffix>`."""

    suffix: str = Field(..., pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="added to the output names")
    prompt_add: str | None = Field(None, max_length=4000, description="appended to the prompt")


class Sidecar(RequestFields):
    """What one image should become. Every field is optional; unset fields take the defaults."""

    model_config = ConfigDict(
        title="vidrop sidecar",
        json_schema_extra={
            "description": "Put NAME.json next to NAME.png in the inbox (or NAME.json alone for a text-to-video "
            "model). Unknown keys are refused. "
            "Aliases accepted: "
            + ", ".join(f"{alias} for {name}" for name, aliases in ALIASES.items() for alias in aliases)
            + ". "
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
            detail=f"sidecar is {len(raw)} bytes; the limit is {max_bytes}",
            fix="Keep the sidecar to the prompt and a few settings.",
        )
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SidecarError(
            "The prompt file is not valid JSON.", detail=str(exc), fix=f"Save it as JSON, for example {EXAMPLE}."
        ) from None
    if not isinstance(data, dict):
        raise SidecarError(
            "The prompt file must hold a JSON object.",
            detail=f"top-level value is {type(data).__name__}",
            fix=f"Wrap the settings in braces, for example {EXAMPLE}.",
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
            detail=detail,
            fix=f"Remove or rename '{key}'. Known settings: {known}.",
        )
    return SidecarError(
        f"The prompt file's '{key}' cannot be used: {first['msg']}.",
        detail=detail,
        fix=f"Change '{key}' and drop the file again; `vidrop schema` lists every setting and its range.",
    )
