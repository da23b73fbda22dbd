"""LTX-Video image-to-video (`LTXImageToVideoPipeline`)."""

from __future__ import annotations

from typing import Any

from pipeline.families.base import Family, FamilyDefaults, FamilyLimits


class LTXFamily(Family):
    """LTX-Video: sizes in multiples of 32, frame counts of the form 8k+1."""

    name = "ltx"
    pipeline_class_names = ("LTXImageToVideoPipeline", "LTXPipeline", "LTXConditionPipeline")
    image_pipeline_class_name = "LTXImageToVideoPipeline"
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
    gpu_dtype = "bfloat16"

    def fit_frames(self, num_frames: int) -> int:
        # The pipeline silently rounds other counts; round up ourselves so the manifest tells the truth.
        return ((max(num_frames, 1) - 1 + 7) // 8) * 8 + 1

    def rule(self, name: str) -> str:
        if name == "num_frames":
            return "ltx needs 8k+1 frames (9, 17, 25, ...)"
        return super().rule(name)

    def call_arguments(self, *, image, prompt, negative_prompt, width, height, num_frames, steps,
                       guidance_scale, fps, generator, callback) -> dict[str, Any]:
        return {
            "image": image,
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "width": width,
            "height": height,
            "num_frames": num_frames,
            "num_inference_steps": steps,
            "guidance_scale": guidance_scale,
            "frame_rate": fps,
            "generator": generator,
            "output_type": "np",
            "callback_on_step_end": callback,
        }
