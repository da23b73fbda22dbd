"""Wan 2.2: the two-expert A14B checkpoints and the TI2V-5B checkpoint, told apart by their model_index.json.

A14B (Wan2.2-I2V-A14B-Diffusers, Wan2.2-T2V-A14B-Diffusers): `transformer` denoises the high-noise steps and
`transformer_2` the low-noise ones, split at the index's `boundary_ratio`. Only one expert runs at a time, so
the memory modes that offload components hold one expert on the GPU, not both (the estimate's
largest-component term is one expert); "full" keeps both resident (the footprint's total counts both).
TI2V-5B (Wan2.2-TI2V-5B-Diffusers): one model for text and for an image (`expand_timesteps`), with its own VAE
(AutoencoderKLWan, z_dim 48, 16× spatial compression), so sizes are multiples of 32 (VAE 16 × patch 2).
"""

from __future__ import annotations

from typing import Any

from vidrop.pipeline.families.base import Family, FamilyDefaults, FamilyLimits

WAN_CLASSES = ("WanImageToVideoPipeline", "WanPipeline")
NEGATIVE = "blurry, static, low quality, worst quality, deformed, subtitles, watermark"


def is_wan22_experts(index: dict[str, Any]) -> bool:
    """A Wan checkpoint with two experts (A14B): a boundary_ratio and a transformer_2 in its model_index."""
    expert = index.get("transformer_2") or [None, None]
    return index.get("_class_name") in WAN_CLASSES and index.get("boundary_ratio") is not None and expert[0] is not None


def is_wan22_ti2v(index: dict[str, Any]) -> bool:
    """The Wan 2.2 TI2V-5B checkpoint: expand_timesteps set in its model_index."""
    return index.get("_class_name") in WAN_CLASSES and bool(index.get("expand_timesteps"))


class Wan22Family(Family):
    """Wan 2.2 A14B (two experts): sizes in multiples of 16, 4k+1 frames, 16 fps."""

    name = "wan2.2"
    pipeline_class_names = WAN_CLASSES
    image_pipeline_class_name = "WanImageToVideoPipeline"
    text_pipeline_class_name = "WanPipeline"
    frame_step = 4  # the Wan VAE compresses time 4×
    size_multiple = 16  # 8× VAE × patch 2; WanPipeline.check_inputs asks for multiples of 16
    # Wan2.2-I2V-A14B-Diffusers model card: 480×832 (max_area 480*832), 81 frames, 40 steps, guidance 3.5,
    # export fps 16. The T2V-A14B card uses 720×1280, guidance 4.0 (3.0 for the low-noise expert), 40 steps.
    defaults = FamilyDefaults(
        width=832, height=480, num_frames=81, steps=40, guidance_scale=3.5, fps=16, negative_prompt=NEGATIVE
    )
    limits = FamilyLimits(max_width=1280, max_height=1280, max_frames=129)
    # The cards name two resolutions, 480p and 720p; fast is the 480p one at fewer steps and frames.
    presets = {
        "fast": {"steps": 20, "num_frames": 49, "width": 832, "height": 480},
        "standard": {"steps": 40, "num_frames": 81, "width": 832, "height": 480},
        "high": {"steps": 40, "num_frames": 81, "width": 1280, "height": 720},
    }
    gpu_dtype = "bfloat16"

    @classmethod
    def matches(cls, index: dict[str, Any]) -> bool:
        return is_wan22_experts(index)


class Wan22TI2VFamily(Family):
    """Wan 2.2 TI2V-5B: one checkpoint for image and text; sizes in multiples of 32, 4k+1 frames, 24 fps."""

    name = "wan2.2-ti2v"
    pipeline_class_names = WAN_CLASSES
    image_pipeline_class_name = "WanImageToVideoPipeline"
    text_pipeline_class_name = "WanPipeline"
    shares_components = True  # the card runs the same checkpoint through both pipelines
    frame_step = 4
    size_multiple = 32  # its VAE compresses 16× spatially, times the transformer's patch of 2
    # Wan2.2-TI2V-5B-Diffusers model card: 704×1280, 121 frames, 50 steps, guidance 5.0, export fps 24.
    defaults = FamilyDefaults(
        width=1280, height=704, num_frames=121, steps=50, guidance_scale=5.0, fps=24, negative_prompt=NEGATIVE
    )
    limits = FamilyLimits(max_width=1280, max_height=1280, max_frames=161)
    presets = {
        "fast": {"steps": 25, "num_frames": 49, "width": 960, "height": 544},
        "standard": {"steps": 50, "num_frames": 121, "width": 1280, "height": 704},
        "high": {"steps": 50, "num_frames": 121, "width": 1280, "height": 704},
    }
    gpu_dtype = "bfloat16"
    # The 48-channel latents are 4× smaller per pixel than Wan 2.1's (16× vs 8× spatial compression).
    denoise_bytes_per_voxel = 24.0

    @classmethod
    def matches(cls, index: dict[str, Any]) -> bool:
        return is_wan22_ti2v(index)
