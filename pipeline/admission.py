"""The per-job memory estimate and admission: the cheapest mode that fits, chosen before the job runs."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vidrop.pipeline.families.base import Family
from vidrop.pipeline.memory import GB, MemorySnapshot
from vidrop.pipeline.modes import LADDER, MemoryMode, pipeline_modules

# The VAE's spatial tile when tiling is on (diffusers' defaults are 512 px tiles).
TILE_PIXELS = 512 * 512
# A calibration ratio is measured/estimated; these bounds keep one odd job from running away with it.
CALIBRATION_BOUNDS = (0.5, 4.0)
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.ckpt")


@dataclass(frozen=True)
class ModelFootprint:
    """How big the model is: all weights, the largest component, the largest single layer."""

    total_bytes: int
    largest_component_bytes: int
    largest_leaf_bytes: int

    @classmethod
    def of_pipeline(cls, pipe: Any) -> ModelFootprint:
        """Measure a loaded pipeline's components."""
        sizes = [_module_bytes(module) for module in pipeline_modules(pipe)]
        leaves = [_module_bytes(leaf, recurse=False) for module in pipeline_modules(pipe) for leaf in module.modules()]
        return cls(
            total_bytes=sum(sizes),
            largest_component_bytes=max(sizes, default=0),
            largest_leaf_bytes=max(leaves, default=0),
        )

    @classmethod
    def of_files(cls, folder: Path) -> ModelFootprint:
        """Guess from the weight files of a saved pipeline, without loading it (for `vidrop check`)."""
        per_component = {}
        for sub in (path for path in folder.iterdir() if path.is_dir()):
            per_component[sub.name] = sum(f.stat().st_size for pattern in WEIGHT_FILES for f in sub.rglob(pattern))
        total = sum(per_component.values())
        return cls(
            total_bytes=total,
            largest_component_bytes=max(per_component.values(), default=0),
            largest_leaf_bytes=total // 50,
        )


def weights_on_device(pipe: Any, device: str) -> int:
    """Bytes of the pipeline's weights that sit on `device` right now (offloaded ones do not)."""
    kind = torch.device(device).type
    return sum(
        tensor.numel() * tensor.element_size()
        for module in pipeline_modules(pipe)
        for tensor in (*module.parameters(), *module.buffers())
        if tensor.device.type == kind
    )


@dataclass
class MemoryEstimator:
    """Peak memory of a job from the model's footprint and the job's width × height × frames.

    The family supplies bytes per output voxel for denoising and for decoding; recent jobs' measured
    peaks scale the estimate (calibration), so a family's rough factor becomes this machine's truth.
    """

    family: Family
    footprint: ModelFootprint
    # On a GPU, offloading moves weights off the device; on the CPU they stay in RAM whatever the mode.
    offloads_weights: bool
    dtype_bytes: int = 2
    history: int = 10
    ratios: deque = field(default_factory=deque)

    def activations(self, mode: MemoryMode, width: int, height: int, frames: int) -> int:
        """Working memory beyond the weights: the larger of denoising and decoding."""
        scale = self.dtype_bytes / 2
        denoise = self.family.denoise_bytes_per_voxel * width * height * frames
        if mode.is_tiled:
            decoded = min(width * height, TILE_PIXELS) * min(frames, self.family.tiled_decode_frames)
        else:
            decoded = width * height * frames
        return int(scale * max(denoise, self.family.decode_bytes_per_voxel * decoded))

    def resident_weights(self, mode: MemoryMode, adapter_bytes: int = 0) -> int:
        """Weights on the device while the job runs in `mode`, with the LoRA adapters loaded into them
        (they live in the denoiser, so they travel with it when the model is offloaded whole)."""
        if not self.offloads_weights or mode in (MemoryMode.AS_IS, MemoryMode.TILED):
            return self.footprint.total_bytes + adapter_bytes
        if mode is MemoryMode.MODEL_OFFLOAD:
            return self.footprint.largest_component_bytes + adapter_bytes
        return 2 * self.footprint.largest_leaf_bytes  # one group running, the next one arriving

    def peak(
        self, mode: MemoryMode, width: int, height: int, frames: int, adapter_bytes: int = 0, lever_bytes: int = 0
    ) -> int:
        """Uncalibrated peak on the device: weights (and adapters) plus working memory (and the speed levers')."""
        working = self.activations(mode, width, height, frames) + lever_bytes
        return self.resident_weights(mode, adapter_bytes) + working

    def need(
        self,
        mode: MemoryMode,
        width: int,
        height: int,
        frames: int,
        resident_now: int,
        adapter_bytes: int = 0,
        lever_bytes: int = 0,
    ) -> int:
        """Calibrated extra memory the job needs beyond what this process already holds on the device."""
        extra = max(0, self.peak(mode, width, height, frames, adapter_bytes, lever_bytes) - resident_now)
        return int(extra * self.calibration)

    @property
    def calibration(self) -> float:
        """The largest recent measured/estimated ratio (cautious), 1.0 before any job ran."""
        return max(self.ratios) if self.ratios else 1.0

    def record(self, estimated_bytes: int, measured_bytes: int) -> None:
        """Learn from one finished job's estimated and measured extra memory."""
        if estimated_bytes <= 0 or measured_bytes <= 0:
            return
        low, high = CALIBRATION_BOUNDS
        self.ratios.append(min(high, max(low, measured_bytes / estimated_bytes)))
        while len(self.ratios) > self.history:
            self.ratios.popleft()


@dataclass(frozen=True)
class MemoryAdmission:
    """The outcome of admission: the mode that fits, or None and what the job is waiting for."""

    mode: MemoryMode | None
    need_bytes: int
    reserve_bytes: int
    snapshot: MemorySnapshot
    needs: dict[str, int]

    @property
    def fits(self) -> bool:
        """Whether the job may start now."""
        return self.mode is not None

    @property
    def waiting_for_bytes(self) -> int:
        """Free memory the job waits for: its need plus the reserve left for others."""
        return self.need_bytes + self.reserve_bytes

    def waiting_text(self) -> str:
        """'waiting for 9.1 GB free GPU memory, 6.2 GB free, held by: blender (pid 4121)'."""
        return (
            f"waiting for {self.waiting_for_bytes / GB:.1f} GB free {self.snapshot.kind}, "
            f"{self.snapshot.free_bytes / GB:.1f} GB free, held by: {self.snapshot.held_by()}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the manifest and the log."""
        return {
            "mode": self.mode.value if self.mode else None,
            "need_bytes": self.need_bytes,
            "reserve_bytes": self.reserve_bytes,
            "free_bytes": self.snapshot.free_bytes,
            "total_bytes": self.snapshot.total_bytes,
            "needs_by_mode": self.needs,
        }


def choose_mode(
    estimator: MemoryEstimator,
    snapshot: MemorySnapshot,
    *,
    width: int,
    height: int,
    frames: int,
    resident_now: int,
    reserve_bytes: int,
    forced: MemoryMode | None = None,
    adapter_bytes: int = 0,
    lever_bytes: int = 0,
) -> MemoryAdmission:
    """The cheapest mode (fastest) whose need fits free memory minus the reserve; None when none does.
    `adapter_bytes`: the LoRA adapters resident while the job runs (already loaded ones are in `resident_now`);
    `lever_bytes`: working memory the job's speed levers add (FasterCache's)."""
    candidates = (forced,) if forced is not None else LADDER
    available = snapshot.free_bytes - reserve_bytes
    needs = {
        mode.value: estimator.need(mode, width, height, frames, resident_now, adapter_bytes, lever_bytes)
        for mode in candidates
    }
    for mode in candidates:
        if needs[mode.value] <= available:
            return MemoryAdmission(mode, needs[mode.value], reserve_bytes, snapshot, needs)
    return MemoryAdmission(None, needs[candidates[-1].value], reserve_bytes, snapshot, needs)


def _module_bytes(module: torch.nn.Module, recurse: bool = True) -> int:
    tensors = (*module.parameters(recurse=recurse), *module.buffers(recurse=recurse))
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)
