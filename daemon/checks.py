"""`vidrop check`: settings, folders, model and device, each reported on its own line."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from vidrop.config.errors import VidropError
from vidrop.config.settings import LoadedSettings
from vidrop.daemon.versions import version_line


def run_checks(loaded: LoadedSettings, out: Callable[[str], None] = print) -> int:
    """Print one line per check; 0 when everything is usable, 1 otherwise."""
    settings = loaded.settings
    results: list[tuple[bool, str]] = [(True, f"versions: {version_line()}")]
    results.append((True, f"settings: valid ({loaded.config_file or 'no file'})"))
    for role, folder in (("inbox", settings.inbox), ("outbox", settings.outbox), ("state_dir", settings.state_dir)):
        results.append(_check_folder(role, folder, writable=role != "inbox"))
    results.extend(_check_models(settings))
    results.append(_check_device(settings.pipeline.device))
    results.extend(_check_memory(settings))
    for is_ok, text in results:
        out(f"{'ok  ' if is_ok else 'FAIL'} {text}")
    failures = sum(1 for is_ok, _ in results if not is_ok)
    out("all checks passed" if not failures else f"{failures} check(s) failed")
    return 0 if not failures else 1


def _check_folder(role: str, folder: Path, *, writable: bool) -> tuple[bool, str]:
    if not folder.exists():
        parent = next((p for p in folder.parents if p.exists()), None)
        if parent is not None and os.access(parent, os.W_OK):
            return True, f"{role}: {folder} does not exist yet; it will be created"
        return False, f"{role}: {folder} does not exist and cannot be created"
    if not folder.is_dir():
        return False, f"{role}: {folder} is not a folder"
    if not os.access(folder, os.R_OK | os.X_OK):
        return False, f"{role}: {folder} cannot be read"
    if writable:
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".vidrop-tmp-check-"):
                pass
        except OSError as exc:
            return False, f"{role}: {folder} is not writable ({exc.strerror})"
    return True, f"{role}: {folder} ({'writable' if writable else 'readable'})"


def _check_models(settings) -> list[tuple[bool, str]]:
    """One line per model on offer (the default first): found, and its family."""
    from vidrop.pipeline.loader import detect_family

    pipeline = settings.pipeline
    offered = pipeline.offered_models()
    lines = []
    for name, model in offered.items():
        label = (
            "model"
            if len(offered) == 1
            else f"model {name}{' (default)' if name == pipeline.default_model_name else ''}"
        )
        try:
            family = detect_family(model, pipeline.family_of(name), offline=pipeline.offline)
        except VidropError as exc:
            lines.append((False, f"{label}: {exc.reason} {exc.detail}. {exc.fix}"))
            continue
        lines.append((True, f"{label}: {model} (family {family.name})"))
        lines.extend((False, f"speed: {problem}") for problem in _speed_problems(name, family.name, pipeline))
    for name, lora in pipeline.loras.items():
        fits = ", ".join([*lora.families, *lora.models]) or "any model"
        low, high = lora.weight_range
        lines.append((True, f"lora {name}: {lora.path} (for {fits}; weights {low}..{high})"))
    return lines


def _speed_problems(name: str, family: str, pipeline) -> list[str]:
    """The requested speed levers that do not apply to this model on the configured device kind."""
    from vidrop.pipeline.speed import Device, SpeedLevers, check_plan

    levers = SpeedLevers(**pipeline.speed.for_model(name).model_dump())
    device = Device("cpu")
    if pipeline.device.startswith("cuda") or pipeline.device == "auto":
        import torch

        if torch.cuda.is_available():
            device = Device("cuda", torch.cuda.get_device_capability())
    return check_plan(name, family, levers, device)


def _check_device(requested: str) -> tuple[bool, str]:
    import torch

    from vidrop.pipeline.loader import resolve_device

    try:
        device = resolve_device(requested)
    except VidropError as exc:
        return False, f"device: {exc.reason} {exc.fix}"
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        free, total = torch.cuda.mem_get_info(index)
        name = torch.cuda.get_device_name(index)
        return True, f"device: {device} ({name}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"
    return True, f"device: cpu (torch {torch.__version__}; no CUDA GPU in use)"


def _check_memory(settings) -> list[tuple[bool, str]]:
    """Free memory on the device, and the estimate and mode for the default job size."""
    from vidrop.pipeline.admission import MemoryEstimator, ModelFootprint, choose_mode
    from vidrop.pipeline.loader import DTYPES, detect_family, resolve_device, resolve_dtype
    from vidrop.pipeline.memory import GB, probe_for

    try:
        device = resolve_device(settings.pipeline.device)
        default = settings.pipeline.default_model_name
        model = settings.pipeline.offered_models()[default]
        family = detect_family(model, settings.pipeline.family_of(default), offline=settings.pipeline.offline)
    except VidropError:
        return []  # the model and device lines already say why
    snapshot = probe_for(device).snapshot()
    lines = [
        (
            True,
            f"memory: {device}, {snapshot.free_bytes / GB:.1f} GB free of {snapshot.total_bytes / GB:.1f} GB"
            f"{', held by: ' + snapshot.held_by() if snapshot.is_gpu else ''}",
        )
    ]
    folder = _model_folder(model)
    if folder is None:
        return [*lines, (True, "memory: no estimate: the model is not downloaded yet")]
    dtype = resolve_dtype(settings.pipeline.dtype, device, family)
    estimator = MemoryEstimator(
        family,
        ModelFootprint.of_files(folder),
        offloads_weights=device.startswith("cuda"),
        dtype_bytes=DTYPES[dtype].itemsize,
    )
    generation, defaults = settings.generation, family.defaults
    size = family.fit(
        generation.width or defaults.width,
        generation.height or defaults.height,
        generation.num_frames or defaults.num_frames,
    )
    reserve = int(settings.memory.reserve_gb * GB)
    admission = choose_mode(
        estimator,
        snapshot,
        width=size.width,
        height=size.height,
        frames=size.num_frames,
        resident_now=0,
        reserve_bytes=reserve,
        forced=settings.memory.forced_mode,
    )
    job = f"default job {size.width}x{size.height}, {size.num_frames} frames ({family.name}, {dtype})"
    estimates = ", ".join(f"{mode} {need / GB:.1f} GB" for mode, need in admission.needs.items())
    if admission.fits:
        return [
            *lines,
            (
                True,
                f"memory: {job}: needs about {admission.need_bytes / GB:.1f} GB, mode "
                f"{admission.mode.value} (reserve {settings.memory.reserve_gb:g} GB; {estimates})",
            ),
        ]
    could_ever_fit = admission.waiting_for_bytes <= snapshot.total_bytes
    verdict = "jobs would wait until it frees" if could_ever_fit else "it can never fit on this device"
    return [
        *lines,
        (could_ever_fit, f"memory: {job}: no mode fits now ({estimates}); {admission.waiting_text()}; {verdict}"),
    ]


def _model_folder(model: str) -> Path | None:
    local = Path(model).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # not in the cache: the hub client raises several types for that
        return None
