"""I2VGen-XL (`I2VGenXLPipeline`): deprecated in diffusers, still what many setups run."""

from __future__ import annotations

from typing import Any

from vidrop.pipeline.families.base import Family, FamilyDefaults, FamilyLimits


class I2VGenXLFamily(Family):
    """I2VGen-XL: sizes in multiples of 8, any frame count."""

    name = "i2vgen-xl"
    pipeline_class_names = ("I2VGenXLPipeline",)
    image_pipeline_class_name = "I2VGenXLPipeline"
    size_multiple = 8
    deprecated = (
        "I2VGenXLPipeline is deprecated in diffusers and the checkpoint (2023) is superseded; "
        "use Wan 2.2 (wan2.2-ti2v or wan2.2) for image-to-video"
    )
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
    denoise_bytes_per_voxel = 250.0
    decode_bytes_per_voxel = 500.0
    tiled_decode_frames = 2
    can_decode_latents = True
    # Frames the VAE decodes at once: as is, and in the tiled modes.
    decode_chunk_size = 8

    def call_arguments(self, **kwargs) -> dict[str, Any]:
        arguments = super().call_arguments(**kwargs)
        del arguments["callback_on_step_end"]  # its __call__ has none: progress comes from a hook on the UNet
        return {
            **arguments,
            "target_fps": kwargs["fps"],
            "decode_chunk_size": self.decode_chunk_size,
            # With transformers 5 the text encoder's hidden-state layout changed; clip_skip must be None.
            "clip_skip": None,
        }

    def memory_arguments(self, mode) -> dict[str, Any]:
        return {"decode_chunk_size": self.tiled_decode_frames} if mode.is_tiled else {}

    def decode_latents(self, pipe, latents, *, width, height, num_frames, generator, mode) -> Any:
        # The end of I2VGenXLPipeline.__call__, with the decode chunk the mode asks for.
        chunk = self.tiled_decode_frames if mode.is_tiled else self.decode_chunk_size
        video = pipe.decode_latents(latents, decode_chunk_size=chunk)
        frames = pipe.video_processor.postprocess_video(video=video, output_type="np")[0]
        pipe.maybe_free_model_hooks()
        return frames
