"""LTX-Video: one checkpoint does image-to-video (`LTXImageToVideoPipeline`) and text-to-video (`LTXPipeline`)."""

from __future__ import annotations

from typing import Any

import torch

from vidrop.pipeline.families.base import Family, FamilyDefaults, FamilyLimits


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
    denoise_bytes_per_voxel = 40.0
    decode_bytes_per_voxel = 200.0
    tiled_decode_frames = 16  # the LTX VAE's temporal tile
    can_decode_latents = True

    def call_arguments(self, **kwargs) -> dict[str, Any]:
        return {**super().call_arguments(**kwargs), "frame_rate": kwargs["fps"]}

    def decode_latents(self, pipe, latents, *, width, height, num_frames, generator, mode) -> Any:
        # The same steps as the end of LTXImageToVideoPipeline.__call__, so a decode can be re-run alone.
        latents = pipe._unpack_latents(
            latents,
            (num_frames - 1) // pipe.vae_temporal_compression_ratio + 1,
            height // pipe.vae_spatial_compression_ratio,
            width // pipe.vae_spatial_compression_ratio,
            pipe.transformer_spatial_patch_size,
            pipe.transformer_temporal_patch_size,
        )
        latents = pipe._denormalize_latents(
            latents, pipe.vae.latents_mean, pipe.vae.latents_std, pipe.vae.config.scaling_factor
        )
        device = pipe._execution_device
        latents = latents.to(device=device, dtype=pipe.transformer.dtype)
        timestep = None
        if pipe.vae.config.timestep_conditioning:
            noise = torch.randn(latents.shape, generator=generator, device="cpu", dtype=latents.dtype).to(device)
            timestep = torch.zeros(latents.shape[0], device=device, dtype=latents.dtype)  # decode_timestep 0.0
            latents = (1 - timestep[:, None, None, None, None]) * latents + timestep[:, None, None, None, None] * noise
        video = pipe.vae.decode(latents, timestep, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="np")[0]
        pipe.maybe_free_model_hooks()
        return frames
