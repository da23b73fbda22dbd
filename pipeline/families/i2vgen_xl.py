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
    gpu_dtype = "float16"
    has_step_callback = False

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
            "target_fps": fps,
            "decode_chunk_size": 8,
            "generator": generator,
            "output_type": "np",
            # With transformers 5 the text encoder's hidden-state layout changed; clip_skip must be None.
            "clip_skip": None,
        }
