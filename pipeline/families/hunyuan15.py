"""HunyuanVideo 1.5 image-to-video (`HunyuanVideo15ImageToVideoPipeline`, diffusers 0.42).

The pipeline takes no width, height or guidance_scale. Its size is a bucket: of the sizes whose area is the
checkpoint's `transformer.config.target_size` squared (480 or 720), in multiples of the VAE's 16 px, the one
nearest the image's aspect ratio (`HunyuanVideo15ImageProcessor.calculate_default_height_width`). vidrop
fits the image to that bucket first, so the pipeline's own crop changes nothing and the manifest says the
size it really made. Guidance goes through the checkpoint's guider (`ClassifierFreeGuidance`): vidrop's
`guidance_scale` becomes the guider's, in the same convention (uncond + g·(cond − uncond); 1 turns CFG off,
one transformer pass per step instead of two).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from vidrop.pipeline.families.base import Family, FamilyDefaults, FamilyLimits, FittedSize

# The 480p checkpoint's transformer target_size and the VAE's spatial compression, until a model is bound.
TARGET_SIZE = 480
VAE_SPATIAL = 16


class HunyuanVideo15Family(Family):
    """HunyuanVideo 1.5 I2V: bucket sizes at the checkpoint's 480p/720p area, 4k+1 frames, 24 fps."""

    name = "hunyuan1.5"
    pipeline_class_names = ("HunyuanVideo15ImageToVideoPipeline",)
    image_pipeline_class_name = "HunyuanVideo15ImageToVideoPipeline"
    frame_step = 4  # its VAE compresses time 4× (temporal_compression_ratio)
    size_multiple = VAE_SPATIAL
    has_step_callback = False  # __call__ takes no callback_on_step_end: progress from a hook on the transformer
    # HunyuanVideo15ImageToVideoPipeline.__call__ defaults and its docstring example (diffusers 0.42, the
    # hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v card): 121 frames, 50 steps, export fps 24. The size is
    # the 480p 16:9 bucket; guidance is the checkpoint's guider's (bind), 6.0 until one is read.
    defaults = FamilyDefaults(width=624, height=352, num_frames=121, steps=50, guidance_scale=6.0, fps=24)
    limits = FamilyLimits(max_width=1920, max_height=1920, max_frames=241)  # 241 frames: the card's 10 s
    # standard is the card's call; fast halves steps and frames (vidrop's choice, no card value); high is the
    # card's call too, at the 720p checkpoint's size when that checkpoint is the one loaded. A step-distilled
    # checkpoint or LoRA gets its own values through [pipeline.presets].
    presets = {
        "fast": {"steps": 25, "num_frames": 61},
        "standard": {"steps": 50, "num_frames": 121},
        "high": {"steps": 50, "num_frames": 121},
    }
    gpu_dtype = "bfloat16"
    # 32-channel latents at 16× spatial compression, like Wan 2.2 TI2V's 48 at 16×.
    denoise_bytes_per_voxel = 24.0

    def __init__(self) -> None:
        self.target_size = TARGET_SIZE
        self.spatial = VAE_SPATIAL

    # Read from these components' config.json before the model is loaded (pipeline/loader.py).
    config_components = ("transformer", "vae", "guider")

    def bind(self, pipe: Any) -> None:
        self._learn(pipe.transformer.config.target_size, pipe.vae_scale_factor_spatial, pipe.guider.guidance_scale)

    def bind_configs(self, configs: dict[str, dict[str, Any]]) -> None:
        self._learn(
            configs.get("transformer", {}).get("target_size", TARGET_SIZE),
            configs.get("vae", {}).get("spatial_compression_ratio", VAE_SPATIAL),
            configs.get("guider", {}).get("guidance_scale", self.defaults.guidance_scale),
        )

    def _learn(self, target_size: int, spatial: int, guidance_scale: float) -> None:
        self.target_size, self.spatial = int(target_size), int(spatial)
        height, width = self.bucket(9, 16)
        self.defaults = replace(self.defaults, width=width, height=height, guidance_scale=float(guidance_scale))

    def bucket(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) this checkpoint makes for a request: itself if it is one of its sizes, else the
        size the pipeline picks for an image of that aspect ratio."""
        from diffusers.pipelines.hunyuan_video1_5.image_processor import generate_crop_size_list

        if (height, width) in generate_crop_size_list(base_size=self.target_size, patch_size=self.spatial):
            return height, width
        return self._picked(height, width)

    def _picked(self, height: int, width: int) -> tuple[int, int]:
        from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor

        processor = HunyuanVideo15ImageProcessor(vae_scale_factor=self.spatial)
        found = processor.calculate_default_height_width(height=height, width=width, target_size=self.target_size)
        return int(found[0]), int(found[1])

    def image_size(self, width: int, height: int) -> tuple[int, int]:
        # The pipeline picks its size from the image's aspect ratio, compared with each size's ratio rounded
        # to 5 digits, so an image of exactly a size can pick its neighbour (544×944 → 544×928 at 720p).
        # A 4× larger image one pixel taller or shorter is on the right side of the rounding; its crop to
        # the size loses a quarter of a pixel.
        for candidate in ((width, height), (4 * width, 4 * height - 1), (4 * width, 4 * height + 1)):
            if self._picked(candidate[1], candidate[0]) == (height, width):
                return candidate
        return width, height

    def fit(self, width: int, height: int, num_frames: int) -> FittedSize:
        fitted = super().fit(width, height, num_frames)
        fitted.height, fitted.width = self.bucket(height, width)
        sizes = [
            {"field": name, "requested": asked, "used": used, "rule": self.rule(name)}
            for name, asked, used in (("width", width, fitted.width), ("height", height, fitted.height))
            if asked != used
        ]
        fitted.adjustments = sizes + [a for a in fitted.adjustments if a["field"] == "num_frames"]
        return fitted

    def rule(self, name: str) -> str:
        if name in ("width", "height"):
            return (
                f"{self.name} makes one size per aspect ratio at its {self.target_size}p area "
                f"(multiples of {self.spatial}): the one nearest the requested width:height"
            )
        return super().rule(name)

    def call_arguments(self, **kwargs: Any) -> dict[str, Any]:
        arguments = super().call_arguments(**kwargs)
        for name in ("width", "height", "guidance_scale", "callback_on_step_end"):
            del arguments[name]  # the size follows the (fitted) image; guidance is the guider's
        return arguments

    def configure(self, pipe: Any, *, guidance_scale: float) -> None:
        # ClassifierFreeGuidance.new: a copy with this guidance_scale and the checkpoint's other settings.
        if float(pipe.guider.guidance_scale) != guidance_scale:
            pipe.guider = pipe.guider.new(guidance_scale=guidance_scale)

    def denoiser_calls_per_step(self, guidance_scale: float) -> int:
        # The guider runs the transformer once per condition: twice with CFG, once at guidance 1.
        return 1 if guidance_scale == 1.0 else 2
