"""LTX-Video: one checkpoint does image-to-video (`LTXImageToVideoPipeline`) and text-to-video (`LTXPipeline`)."""

from __future__ import annotations

from typing import Any

from pipeline.families.base import Family, FamilyDefaults, FamilyLimits


class LTXFamily(Family):
    """LTX-Video: sizes in multiples of 32, frame counts of the form 8k+1."""

    name = "ltx"
    pipeline_class_names = ("LTXImageToVideoPipeline", "LTXPipeline", "LTXConditionPipeline")
    image_pipeline_class_name = "LTXImageToVideoPipeline"
    text_pipeline_class_name = "LTXPipeline"
    shares_components = True
    frame_step = 8
    size_multiple = 32
    defaults = FamilyDefaults(
        width=704,
        height=480,
        num_frames=121,
        steps=50,
        guidance_scale=3.0,
        fps=24,
        negative_prompt="worst quality, inconsistent motion, blurry, jittery, distorted",
    )
    limits = FamilyLimits(max_width=1280, max_height=1280, max_frames=257)
    presets = {
        "fast": {"steps": 20, "num_frames": 65, "width": 512, "height": 320},
        "standard": {"steps": 50, "num_frames": 121, "width": 704, "height": 480},
        "high": {"steps": 60, "num_frames": 161, "width": 1216, "height": 704},
    }
    gpu_dtype = "bfloat16"

    def call_arguments(self, **kwargs) -> dict[str, Any]:
        return {**super().call_arguments(**kwargs), "frame_rate": kwargs["fps"]}
