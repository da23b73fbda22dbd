"""Memory modes (the ladder, fastest first, is `MemoryMode` in config/vocabulary.py): how each is applied to a
diffusers pipeline, and undone."""

from __future__ import annotations

from typing import Any

import torch

from vidrop.config.vocabulary import MemoryMode

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
        pipe.enable_group_offload(
            onload_device=torch.device(device), offload_device=torch.device("cpu"), offload_type="leaf_level"
        )


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
