"""Wan 2.1 image-to-video (`WanImageToVideoPipeline`); its prompt cleaning needs `ftfy`."""

from __future__ import annotations

from typing import Any

from vidrop.pipeline.families.base import Family, FamilyDefaults, FamilyLimits
from vidrop.pipeline.families.wan22 import is_wan22_experts, is_wan22_ti2v


class WanFamily(Family):
    """Wan 2.1: sizes in multiples of 16, frame counts of the form 4k+1."""

    name = "wan"
    pipeline_class_names = ("WanImageToVideoPipeline", "WanPipeline")
    image_pipeline_class_name = "WanImageToVideoPipeline"
    text_pipeline_class_name = "WanPipeline"
    frame_step = 4
    size_multiple = 16
    defaults = FamilyDefaults(
        width=832,
        height=480,
        num_frames=81,
        steps=40,
        guidance_scale=5.0,
        fps=16,
        negative_prompt="blurry, static, low quality, worst quality, deformed, subtitles, watermark",
    )
    limits = FamilyLimits(max_width=1280, max_height=1280, max_frames=129)
    presets = {
        "fast": {"steps": 20, "num_frames": 33, "width": 640, "height": 368},
        "standard": {"steps": 40, "num_frames": 81, "width": 832, "height": 480},
        "high": {"steps": 50, "num_frames": 81, "width": 1280, "height": 720},
    }
    gpu_dtype = "bfloat16"

    @classmethod
    def matches(cls, index: dict[str, Any]) -> bool:
        return super().matches(index) and not (is_wan22_experts(index) or is_wan22_ti2v(index))
