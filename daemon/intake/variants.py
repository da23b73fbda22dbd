"""One sidecar, several results: `seeds` and `variants` expand into one request per job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from vidrop.config.sidecar import Sidecar

# (preset name, model name or None for the default) → the fields that preset sets for that model's family.
PresetLookup = Callable[[str, "str | None"], dict[str, Any]]
# The key in Job.params that names a variant's suffix (for the manifest); outputs are `<stem><suffix>.*`.
VARIANT = "variant"


@dataclass(frozen=True)
class Request:
    """The requested fields of one job and the suffix of its output names ("" for the plain one)."""

    suffix: str
    fields: dict[str, Any]


def expand(defaults: dict[str, Any], sidecar: Sidecar | None, preset: PresetLookup) -> list[Request]:
    """One request per variant and seed: settings defaults, then the preset, then the explicit fields."""
    if sidecar is None:
        return [Request("", layered(defaults, {}, preset))]
    shared = sidecar.model_dump(exclude_none=True, exclude={"seeds", "variants"})
    requests = []
    for variant in sidecar.variants or [None]:
        explicit, suffix = dict(shared), ""
        if variant is not None:
            own = variant.model_dump(exclude_none=True)
            suffix = own.pop("suffix")
            addition = own.pop("prompt_add", None)
            explicit.update(own)
            if addition:
                base = explicit.get("prompt") or defaults.get("prompt")
                explicit["prompt"] = f"{base}, {addition}" if base else addition
        for seed in sidecar.seeds or [None]:
            fields = dict(explicit)
            name = suffix
            if seed is not None:
                fields["seed"] = seed
                name += f"_seed{seed}"
            requests.append(Request(name, layered(defaults, fields, preset)))
    return requests


def layered(defaults: dict[str, Any], explicit: dict[str, Any], preset: PresetLookup) -> dict[str, Any]:
    """Settings defaults, overridden by the preset's values, overridden by what the request set itself.

    A preset's LoRAs (a step-distilled one) stay when the request asks for LoRAs of its own (a style): the
    request's are added, and its weight wins for a LoRA both name."""
    fields = dict(defaults)
    name = explicit.get("preset") or defaults.get("preset")
    preset_loras: list[dict[str, Any]] = []
    if name:
        fields.update(preset(name, explicit.get("model") or defaults.get("model")))
        fields["preset"] = name
        preset_loras = list(fields.get("loras") or ())
    fields.update(explicit)
    if preset_loras and explicit.get("loras"):
        own = {entry["name"] for entry in explicit["loras"]}
        fields["loras"] = [e for e in preset_loras if e["name"] not in own] + list(explicit["loras"])
    return fields
