"""Loading a model once: family detection, device and dtype, offline behaviour."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import structlog
import torch
import transformers

from vidrop.config.errors import ModelUnavailable
from vidrop.pipeline.families import Family, family_by_name, family_for_model_index
from vidrop.pipeline.hub import cache_description, hub_unreachable
from vidrop.pipeline.memory import most_free_cuda_device

log = structlog.get_logger()

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A resident diffusers pipeline and the facts about how it was loaded."""

    pipe: Any
    family: Family
    model: str
    device: str
    dtype: str
    load_seconds: float
    # Mode (image/text) → the pipeline that runs it; LTX-Video's two share one set of components.
    pipes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.pipes:
            self.pipes = {"image": self.pipe}

    @property
    def modes(self) -> tuple[str, ...]:
        """What this model makes videos from: image, text or both."""
        return tuple(self.pipes)


def resolve_device(requested: str) -> str:
    """auto → the CUDA GPU with the most free memory if torch sees one, else the CPU."""
    if requested == "auto":
        return most_free_cuda_device() or "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailable(
            f"The device {requested} was asked for, but torch sees no CUDA GPU.",
            detail=f"pipeline.device={requested}; torch.cuda.is_available() is False (torch {torch.__version__})",
            fix='Set pipeline.device = "auto" or "cpu", or install a CUDA build of torch and the driver.',
        )
    return requested


def resolve_dtype(requested: str, device: str, family: Family) -> str:
    """auto → the family's GPU dtype on CUDA (float16 where the GPU has no bfloat16), float32 on the CPU."""
    if requested != "auto":
        return requested
    if not device.startswith("cuda"):
        return "float32"
    if family.gpu_dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        return "float16"
    return family.gpu_dtype


def read_model_index(model: str, *, offline: bool) -> dict[str, Any]:
    """The model's model_index.json, from a local directory or the hub (cache only when offline)."""
    local = Path(model).expanduser()
    if local.is_dir():
        index = local / "model_index.json"
        if not index.is_file():
            raise ModelUnavailable(
                f"The model folder {local} has no model_index.json.",
                detail=f"looked for {index}",
                fix="Point pipeline.model at a folder written by save_pretrained, or at a Hugging Face model id.",
            )
        return json.loads(index.read_text(encoding="utf-8"))
    try:  # the cache first: a cached model starts without the network
        with warnings.catch_warnings():  # diffusers passes huggingface_hub an argument it deprecated
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            return dict(diffusers.DiffusionPipeline.load_config(model, local_files_only=True))
    except Exception as exc:  # the hub client raises many types for "not there"
        missing = exc
    unreachable = None if offline else hub_unreachable()
    if offline or unreachable:
        raise _not_found(model, offline, missing, unreachable=unreachable)
    try:
        return dict(diffusers.DiffusionPipeline.load_config(model))
    except Exception as exc:
        raise _not_found(model, offline, exc) from None


def detect_family(model: str, configured: str, *, offline: bool, index: dict[str, Any] | None = None) -> Family:
    """The family named in settings, or the one model_index.json declares."""
    if configured != "auto":
        return family_by_name(configured)
    if index is None:
        index = read_model_index(model, offline=offline)
    return family_for_model_index(index)


def inspect_model(model: str, *, family: str, device: str, dtype: str, offline: bool) -> LoadedModel:
    """What a model is (family, modes, device, dtype) from its model_index.json, without loading its weights.

    The result is an unloaded LoadedModel (no pipelines); loading it is `load_model` with the same arguments.
    """
    index = read_model_index(model, offline=offline)
    class_name = index.get("_class_name", "")
    chosen_family = detect_family(model, family, offline=offline, index=index)
    classes = _pipeline_classes(chosen_family, class_name)
    chosen_device = resolve_device(device)
    chosen_family.bind_configs(_component_configs(model, getattr(chosen_family, "config_components", ())))
    return LoadedModel(
        pipe=None,
        family=chosen_family,
        model=model,
        device=chosen_device,
        dtype=resolve_dtype(dtype, chosen_device, chosen_family),
        load_seconds=0.0,
        pipes={mode: None for mode in classes},
    )


def _component_configs(model: str, components: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The config.json of each named component, from a local folder or the hub cache (never downloaded)."""
    from huggingface_hub import try_to_load_from_cache

    configs = {}
    for component in components:
        local = Path(model).expanduser()
        if local.is_dir():
            found: Any = local / component / "config.json"
        else:
            try:
                found = try_to_load_from_cache(model, f"{component}/config.json")
            except ValueError:  # not a repo id
                continue
        if isinstance(found, (str, Path)):
            try:
                configs[component] = json.loads(Path(found).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # unreadable: the family keeps its defaults until the model is loaded
    return configs


def _pipeline_classes(chosen_family: Family, class_name: str) -> dict[str, str]:
    classes = chosen_family.pipeline_classes(class_name)
    if not classes:
        raise ModelUnavailable(
            f"The model is a {class_name}, which the {chosen_family.name} family cannot run.",
            detail=f"pipeline class {class_name}; family {chosen_family.name} runs "
            f"{', '.join(chosen_family.pipeline_class_names)}",
            fix='Set pipeline.family = "auto" or to the model\'s family.',
        )
    return classes


def load_model(model: str, *, family: str, device: str, dtype: str, offline: bool) -> LoadedModel:
    """Load the pipeline once with from_pretrained and move it to its device."""
    started = time.monotonic()
    # Progress bars are for notebooks; the daemon reports progress through its own events.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    index = read_model_index(model, offline=offline)
    class_name = index.get("_class_name", "")
    chosen_family = detect_family(model, family, offline=offline, index=index)
    classes = _pipeline_classes(chosen_family, class_name)
    chosen_device = resolve_device(device)
    chosen_dtype = resolve_dtype(dtype, chosen_device, chosen_family)
    first, *others = classes.items()
    try:
        pipe = getattr(diffusers, first[1]).from_pretrained(
            model,
            dtype=DTYPES[chosen_dtype],
            # No hub to ask: the cache as it is, without some 24 s of retries first.
            local_files_only=offline or Path(model).expanduser().is_dir() or bool(hub_unreachable()),
        )
    except (OSError, ValueError, EnvironmentError) as exc:
        raise _not_found(model, offline, exc) from None
    pipe.to(chosen_device)
    pipe.set_progress_bar_config(disable=True)
    pipes = {first[0]: pipe}
    for mode, class_name in others:  # the same components, another __call__
        pipes[mode] = getattr(diffusers, class_name).from_pipe(pipe)
        pipes[mode].set_progress_bar_config(disable=True)
    chosen_family.bind(pipe)
    if chosen_family.deprecated:
        log.warning("model_family_deprecated", model=model, family=chosen_family.name, reason=chosen_family.deprecated)
    return LoadedModel(
        pipe=pipe,
        family=chosen_family,
        model=model,
        device=chosen_device,
        dtype=chosen_dtype,
        load_seconds=time.monotonic() - started,
        pipes=pipes,
    )


def _not_found(model: str, offline: bool, exc: Exception, *, unreachable: str | None = None) -> ModelUnavailable:
    local = Path(model).expanduser().absolute()
    where = f"the local folder {local} (not there) and {cache_description()}"
    if unreachable:
        reason = f"The model {model!r} is not in the Hugging Face cache, and the hub cannot be reached ({unreachable})."
    else:
        reason = f"The model {model!r} could not be loaded."
    how = (
        f"On a machine with internet run `hf download {model} --local-dir models/{model.rsplit('/', 1)[-1]}`, copy "
        "that folder here and set pipeline.model (VIDROP_PIPELINE__MODEL) to it; or fill the cache the service reads "
        "(HF_HOME; the systemd unit sets HF_HOME=/var/cache/vidrop/huggingface)"
    )
    if offline:
        how += "; downloads are off because HF_HUB_OFFLINE=1 or pipeline.offline = true"
    return ModelUnavailable(
        reason,
        detail=f"looked in {where}: {type(exc).__name__}: {exc}",
        fix=how + ". `vidrop demo-model DIR` writes a tiny test model.",
    )
