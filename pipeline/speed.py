"""The speed plan: which levers (compile, attention backend, step cache, fp8) a model may run with.

`check_plan` takes the requested levers, the model's family and denoiser class, and the device, and returns
the refusals (one line each: lever, model, why). It knows nothing of systemd or exit codes.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

# Families whose denoiser routes attention through diffusers' attention dispatcher.
DISPATCHER_FAMILIES = frozenset({"ltx", "wan"})
# Step caches each family's denoiser supports (diffusers 0.42 hooks registry).
CACHES_BY_FAMILY: dict[str, frozenset[str]] = {
    "cogvideox": frozenset({"faster", "pab", "first_block"}),
    "wan": frozenset({"faster", "pab", "first_block", "taylorseer", "mag"}),
    "ltx": frozenset({"pab", "first_block", "taylorseer"}),
}
# Attention backends → the module they need.
BACKEND_MODULES = {"flash": "flash_attn", "sage": "sageattention", "_flash_3_hub": "kernels", "flex": "torch"}
TRANSFORMER_FAMILIES = frozenset({"ltx", "wan", "cogvideox"})
# Families whose denoiser declares `_repeated_blocks` (regional compile); others may only compile whole.
REPEATED_BLOCK_FAMILIES = frozenset({"ltx", "wan"})


@dataclass(frozen=True)
class SpeedLevers:
    """The levers asked for one model."""

    compile: str = "off"  # off | regional | full
    attention: str = "auto"  # auto | native | a backend name
    cache: str = "off"  # off | faster | pab | first_block | taylorseer | mag
    quantize: str = "off"  # off | fp8


@dataclass(frozen=True)
class Device:
    """What the plan needs to know of the device."""

    kind: str  # cpu | cuda
    capability: tuple[int, int] | None = None


def check_plan(model: str, family: str, levers: SpeedLevers, device: Device) -> list[str]:
    """Every requested lever that does not apply, as `lever=value model=… why`."""
    problems = []
    if levers.compile == "regional" and family not in REPEATED_BLOCK_FAMILIES:
        problems.append(_line("compile", "regional", model, f"the {family} denoiser declares no repeated blocks"))
    if levers.attention not in ("auto", "native"):
        if family not in DISPATCHER_FAMILIES:
            problems.append(_line("attention", levers.attention, model, f"family {family} ignores attention backends"))
        elif importlib.util.find_spec(BACKEND_MODULES.get(levers.attention, "torch")) is None:
            problems.append(_line("attention", levers.attention, model, "its kernel is not installed"))
    if levers.cache != "off" and levers.cache not in CACHES_BY_FAMILY.get(family, frozenset()):
        problems.append(_line("cache", levers.cache, model, f"the {family} denoiser does not support it"))
    if levers.quantize == "fp8":
        problems.extend(_fp8_problems(model, family, device))
    return problems


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
