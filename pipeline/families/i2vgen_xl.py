"""I2VGen-XL (`I2VGenXLPipeline`): deprecated in diffusers, still what many setups run."""

from __future__ import annotations

from typing import Any

from pipeline.families.base import Family, FamilyDefaults, FamilyLimits


class I2VGenXLFamily(Family):
    """I2VGen-XL: sizes in multiples of 8, any frame count."""

    name = "i2vgen-xl"
    pipeline_class_names = ("I2VGenXLPipeline",)
    image_pipeline_class_name = "I2VGenXLPipeline"
    size_multiple = 8
    defaults = FamilyDefaults(
        width=1280,
        height=704,
        num_frames=16,
        steps=50,
        guidance_scale=9.0,
        fps=16,
        negative_prompt="Distorted, discontinuous, ugly, blurry, low resolution, motionless, static",
    )
    limits = FamilyLimits(max_width=1280, max_height=1280, max_frames=64)
    presets = {
        "fast": {"steps": 25, "num_frames": 16, "width": 640, "height": 352},
        "standard": {"steps": 50, "num_frames": 16, "width": 1280, "height": 704},
        "high": {"steps": 80, "num_frames": 24, "width": 1280, "height": 704},
    }
    gpu_dtype = "float16"
    has_step_callback = False

    def call_arguments(self, **kwargs) -> dict[str, Any]:
        arguments = super().call_arguments(**kwargs)
        del arguments["callback_on_step_end"]  # its __call__ has none: progress comes from a hook on the UNet
        return {
            **arguments,
            "target_fps": kwargs["fps"],
            "decode_chunk_size": 8,
            # With transformers 5 the text encoder's hidden-state layout changed; clip_skip must be None.
            "clip_skip": None,
        }
