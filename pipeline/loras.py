"""LoRAs per job: checked against what the settings offer, loaded once through diffusers' LoRA API (peft),
switched between jobs with `set_adapters`, without reloading the base model.

`check_loras` is the request rule (intake: unknown name, wrong family or model, weight out of range);
`LoraAdapters` keeps the adapters of one loaded pipeline (the runner: load, switch, forget on unload).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import structlog
from safetensors import safe_open

from vidrop.config.errors import InputError
from vidrop.config.request import lora_set
from vidrop.config.settings import LoraSettings

log = structlog.get_logger()

# Adapters kept loaded per model beyond those a job asks for (least recently used go first). Each is small
# next to the base model; the cap bounds what a long-running daemon accumulates.
MAX_KEPT_ADAPTERS = 4


def _offered(loras: dict[str, LoraSettings], family: str, model: str) -> list[str]:
    return [name for name, lora in loras.items() if fits(lora, family, model)]


def fits(lora: LoraSettings, family: str, model: str) -> bool:
    """Whether the settings restrict this LoRA to other families or models."""
    return (not lora.families or family in lora.families) and (not lora.models or model in lora.models)


def check_loras(requested: list[dict[str, Any]], loras: dict[str, LoraSettings], *, family: str, model: str) -> None:
    """Refuse a LoRA that is not offered, does not fit the model, or is asked for outside its weights."""
    offered = ", ".join(_offered(loras, family, model)) or "none"
    seen: set[str] = set()
    for entry in requested:
        name, weight = entry["name"], float(entry.get("weight", 1.0))
        lora = loras.get(name)
        if lora is None:
            raise InputError(
                f"The LoRA '{name}' is not one of the LoRAs this vidrop offers.",
                detail=f"loras: {name!r}; offered for model {model}: {offered}",
                fix=f"Use one of: {offered}, or ask the operator to add it to [pipeline.loras].",
            )
        if not fits(lora, family, model):
            raise InputError(
                f"The LoRA '{name}' does not fit the model '{model}'.",
                detail=f"{name} is for families {lora.families or 'any'} and models {lora.models or 'any'}; "
                f"the model is {model} ({family}); offered for it: {offered}",
                fix=f'Use one of: {offered}, or set "model" to one the LoRA fits.',
            )
        low, high = lora.weight_range
        if not low <= weight <= high:
            raise InputError(
                f"The LoRA '{name}' cannot be used at weight {weight}.",
                detail=f"{name} allows weights {low}..{high}; offered for model {model}: {offered}",
                fix=f"Set its weight between {low} and {high}.",
            )
        if name in seen:
            raise InputError(
                f"The LoRA '{name}' is asked for twice.",
                detail=f"loras: {[e['name'] for e in requested]}",
                fix=f"Name '{name}' once, with one weight.",
            )
        seen.add(name)


class LoraAdapters:
    """The adapters loaded into one pipeline: loaded on first use, kept for the next job, switched by weight."""

    def __init__(self, loras: dict[str, LoraSettings]) -> None:
        self.loras = loras
        self.loaded: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.active: list[str] = []  # the last job's
        self.loads = 0  # how many times an adapter was read from its file (tests and logs count them)
        self.sizes: dict[str, int] = {}  # bytes of each loaded adapter's weights in the model, measured

    def resident_bytes(self, requested: tuple[dict[str, Any], ...], dtype_bytes: int) -> int:
        """Bytes of the adapters in the model while a job with `requested` runs: those kept loaded (measured)
        and those it loads (from their files' tensor shapes, at float32: peft may keep adapters in float32)."""
        names = dict.fromkeys([*self.loaded, *(entry["name"] for entry in requested)])
        return sum(self.sizes.get(name) or self._file_bytes(name, max(dtype_bytes, 4)) for name in names)

    def _file_bytes(self, name: str, element_bytes: int) -> int:
        lora = self.loras.get(name)
        if lora is None:
            return 0
        files = [lora.path] if lora.path.is_file() else sorted(lora.path.glob("*.safetensors"))[:1]
        total = 0
        for path in files:
            with safe_open(str(path), framework="pt") as weights:
                for key in weights.keys():
                    total += math.prod(weights.get_slice(key).get_shape()) * element_bytes
        return total

    def kept_sets(self) -> list[str]:
        """The LoRA sets (`lora_set`) a job may ask for without loading an adapter: none, each loaded one,
        and the last job's (the queue prefers their jobs)."""
        return list(dict.fromkeys(["", *self.loaded, lora_set([{"name": n} for n in self.active])]))

    def forget(self) -> None:
        """The pipeline was unloaded: its adapters went with it."""
        self.loaded.clear()
        self.active = []
        self.sizes.clear()

    def apply(self, pipe: Any, requested: tuple[dict[str, Any], ...], *, model: str) -> list[dict[str, Any]]:
        """Make exactly the requested adapters active at their weights; what the manifest records."""
        names = [entry["name"] for entry in requested]
        facts = []
        for entry in requested:
            loaded_now = entry["name"] not in self.loaded
            if loaded_now:
                self._load(pipe, entry["name"], model)
            self.loaded.move_to_end(entry["name"])
            facts.append(
                {
                    "name": entry["name"],
                    "weight": float(entry.get("weight", 1.0)),
                    "path": str(self.loras[entry["name"]].path),
                    "loaded_now": loaded_now,
                }
            )
        self._trim(pipe, keep=set(names))
        self.active = names
        if names:
            pipe.enable_lora()
            pipe.set_adapters(names, [fact["weight"] for fact in facts])
        elif self.loaded:
            pipe.disable_lora()
        return facts

    def _load(self, pipe: Any, name: str, model: str) -> None:
        lora = self.loras[name]
        is_file = lora.path.is_file()
        source, options = (lora.path.parent, {"weight_name": lora.path.name}) if is_file else (lora.path, {})
        try:
            pipe.load_lora_weights(str(source), adapter_name=name, **options)
            if getattr(pipe, "transformer_2", None) is not None:  # Wan 2.2: the second expert gets its part
                pipe.load_lora_weights(str(source), adapter_name=name, load_into_transformer_2=True, **options)
            if not any(name in names for names in pipe.get_list_adapters().values()):
                raise ValueError("none of its keys name a layer of this model")
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            self._drop(pipe, name)
            raise InputError(
                f"The LoRA '{name}' does not fit the model '{model}'.",
                detail=f"loading {lora.path} failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}",
                fix="Use a LoRA made for this model, or ask the operator to restrict it in [pipeline.loras].",
            ) from None
        self.loaded[name] = None
        self.loads += 1
        self.sizes[name] = adapter_bytes(pipe, name)
        log.info("lora_loaded", lora=name, model=model, path=str(lora.path), loads=self.loads, bytes=self.sizes[name])

    def _trim(self, pipe: Any, keep: set[str]) -> None:
        for name in list(self.loaded):
            if len(self.loaded) <= max(MAX_KEPT_ADAPTERS, len(keep)):
                return
            if name not in keep:
                self._drop(pipe, name)
                self.loaded.pop(name, None)
                self.sizes.pop(name, None)
                log.info("lora_unloaded", lora=name, reason="too_many_kept")

    @staticmethod
    def _drop(pipe: Any, name: str) -> None:
        try:
            pipe.delete_adapters(name)
        except (ValueError, KeyError, AttributeError):
            pass  # a half-loaded adapter may not be registered everywhere


def adapter_bytes(pipe: Any, name: str) -> int:
    """Bytes of the adapter `name`'s weights in the pipeline's denoisers (peft's lora_A/lora_B.<name>)."""
    total = 0
    for component in ("transformer", "transformer_2", "unet"):
        module = getattr(pipe, component, None)
        if module is None:
            continue
        for key, tensor in module.named_parameters():
            if f"lora_A.{name}." in key or f"lora_B.{name}." in key:
                total += tensor.numel() * tensor.element_size()
    return total
