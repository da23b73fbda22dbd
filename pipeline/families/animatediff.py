"""AnimateDiff (`AnimateDiffPipeline`): a prompt alone becomes a short loop, a GIF by default."""

from __future__ import annotations

from vidrop.pipeline.families.base import Family, FamilyDefaults, FamilyLimits


class AnimateDiffFamily(Family):
    """AnimateDiff on Stable Diffusion 1.5: sizes in multiples of 8, up to 32 frames, text only."""

    name = "animatediff"
    pipeline_class_names = ("AnimateDiffPipeline",)
    text_pipeline_class_name = "AnimateDiffPipeline"
    size_multiple = 8
    defaults = FamilyDefaults(
        width=512,
        height=512,
        num_frames=16,
        steps=25,
        guidance_scale=7.5,
        fps=8,
        negative_prompt="bad quality, worse quality, low resolution",
        format="gif",
    )
    # The motion modules were trained on 16-frame clips; far longer ones fall apart.
    limits = FamilyLimits(max_width=1024, max_height=1024, max_frames=32)
    presets = {
        "fast": {"steps": 10, "num_frames": 16, "width": 384, "height": 384},
        "standard": {"steps": 25, "num_frames": 16, "width": 512, "height": 512},
        "high": {"steps": 40, "num_frames": 24, "width": 512, "height": 512, "guidance_scale": 8.0},
    }
    gpu_dtype = "float16"
