"""Stable Video Diffusion (`StableVideoDiffusionPipeline`): an image in, no prompt."""

from __future__ import annotations

from typing import Any

from vidrop.pipeline.families.base import Family, FamilyDefaults, FamilyLimits

# Frames decoded at once by the temporal VAE decoder: the main lever on its memory peak.
DECODE_CHUNK_SIZE = 8


class SVDFamily(Family):
    """SVD / SVD-XT: sizes in multiples of 64, any frame count, no text prompt."""

    name = "svd"
    pipeline_class_names = ("StableVideoDiffusionPipeline",)
    image_pipeline_class_name = "StableVideoDiffusionPipeline"
    size_multiple = 64
    uses_prompt = False
    defaults = FamilyDefaults(width=1024, height=576, num_frames=25, steps=25, guidance_scale=3.0, fps=7)
    limits = FamilyLimits(max_width=1024, max_height=1024, max_frames=25)
    presets = {
        "fast": {"steps": 10, "num_frames": 14, "width": 768, "height": 448},
        "standard": {"steps": 25, "num_frames": 25, "width": 1024, "height": 576},
        "high": {"steps": 40, "num_frames": 25, "width": 1024, "height": 576, "guidance_scale": 3.5},
    }
    gpu_dtype = "float16"
    tiled_decode_frames = 2

    def call_arguments(self, **kwargs) -> dict[str, Any]:
        arguments = super().call_arguments(**kwargs)
        for name in ("prompt", "negative_prompt", "guidance_scale"):  # no text; guidance ramps over the frames
            del arguments[name]
        return {
            **arguments,
            "min_guidance_scale": 1.0,
            "max_guidance_scale": kwargs["guidance_scale"],
            "fps": kwargs["fps"],
            "decode_chunk_size": min(DECODE_CHUNK_SIZE, kwargs["num_frames"]),
        }

    def memory_arguments(self, mode) -> dict[str, Any]:
        # In the tiled modes the temporal decoder takes two frames at a time.
        return {"decode_chunk_size": self.tiled_decode_frames} if mode.is_tiled else {}
