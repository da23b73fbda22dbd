"""Memory modes: the ladder from fastest to leanest, and how each is applied to a diffusers pipeline."""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch


class MemoryMode(str, Enum):
    """How a job runs, cheapest in time first: each rung needs less memory and runs slower."""

    AS_IS = "as_is"
    # VAE tiling and slicing, smaller decode chunks: the decode of all frames is the usual peak.
    TILED = "tiled"
    # Whole components move to the device only while they run (accelerate hooks).
    MODEL_OFFLOAD = "model_offload"
    # Leaf layers move to the device one group at a time (diffusers group offloading).
    GROUP_OFFLOAD = "group_offload"

    def next_down(self) -> MemoryMode | None:
        """The next leaner rung, or None at the bottom."""
        ladder = list(MemoryMode)
        position = ladder.index(self)
        return ladder[position + 1] if position + 1 < len(ladder) else None

    @property
    def is_tiled(self) -> bool:
        """Whether the VAE decodes in tiles in this mode (every rung from TILED down)."""
        return self is not MemoryMode.AS_IS


LADDER = tuple(MemoryMode)
_GROUP_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")


def apply_mode(pipe: Any, mode: MemoryMode, device: str) -> None:
    """Put the pipeline into `mode` from the plain state (everything on `device`, no hooks, no tiling)."""
    vae = getattr(pipe, "vae", None)
    if mode.is_tiled and vae is not None:
        for switch in ("enable_tiling", "enable_slicing"):
            if hasattr(vae, switch):
                getattr(vae, switch)()
    if mode is MemoryMode.MODEL_OFFLOAD:
        pipe.enable_model_cpu_offload(device=device)
    elif mode is MemoryMode.GROUP_OFFLOAD:
        pipe.enable_group_offload(onload_device=torch.device(device), offload_device=torch.device("cpu"),
                                  offload_type="leaf_level")


def reset_mode(pipe: Any, device: str) -> None:
    """Back to the plain state, so one big job does not leave every later job slow."""
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        for switch in ("disable_tiling", "disable_slicing"):
            if hasattr(vae, switch):
                getattr(vae, switch)()
    if getattr(pipe, "_offload_device", None) is not None or _has_accelerate_hooks(pipe):
        pipe.remove_all_hooks()
        pipe._offload_device = None
    if _has_group_offload(pipe):
        from diffusers.hooks import HookRegistry

        for module in pipeline_modules(pipe):
            registry = HookRegistry.check_if_exists_or_initialize(module)
            for name in _GROUP_HOOKS:
                registry.remove_hook(name, recurse=True)
    pipe.to(device)


def mode_state(pipe: Any) -> dict[str, bool]:
    """What is switched on now: for tests and the manifest."""
    vae = getattr(pipe, "vae", None)
    return {
        "vae_tiling": bool(getattr(vae, "use_tiling", False)),
        "vae_slicing": bool(getattr(vae, "use_slicing", False)),
        "model_offload_hooks": _has_accelerate_hooks(pipe),
        "group_offload_hooks": _has_group_offload(pipe),
    }


def pipeline_modules(pipe: Any) -> list[torch.nn.Module]:
    """The pipeline's torch modules (transformer or UNet, VAE, encoders)."""
    return [component for component in pipe.components.values() if isinstance(component, torch.nn.Module)]


def _has_accelerate_hooks(pipe: Any) -> bool:
    return any(hasattr(module, "_hf_hook") for module in pipeline_modules(pipe))


def _has_group_offload(pipe: Any) -> bool:
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    return any(_is_group_offload_enabled(module) for module in pipeline_modules(pipe))
