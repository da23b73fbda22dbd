"""CogVideoX: text-to-video (`CogVideoXPipeline`) and image-to-video (`CogVideoXImageToVideoPipeline`)."""

from __future__ import annotations

from typing import Any

from vidrop.pipeline.families.base import Family, FamilyDefaults, FamilyLimits, FittedSize


class CogVideoXFamily(Family):
    """CogVideoX: 4k+1 frames; sizes in multiples of 16, or exactly the size an I2V checkpoint was built for."""

    name = "cogvideox"
    pipeline_class_names = ("CogVideoXPipeline", "CogVideoXImageToVideoPipeline")
    image_pipeline_class_name = "CogVideoXImageToVideoPipeline"
    text_pipeline_class_name = "CogVideoXPipeline"
    frame_step = 4
    size_multiple = 16
    defaults = FamilyDefaults(width=720, height=480, num_frames=49, steps=50, guidance_scale=6.0, fps=8)
    limits = FamilyLimits(max_width=1360, max_height=1360, max_frames=81)
    presets = {
        "fast": {"steps": 20, "num_frames": 25},
        "standard": {"steps": 50, "num_frames": 49},
        "high": {"steps": 50, "num_frames": 49, "guidance_scale": 7.0},
    }
    gpu_dtype = "bfloat16"

    def __init__(self) -> None:
        self.fixed_size: tuple[int, int] | None = None

    def bind(self, pipe: Any) -> None:
        # Learned positional embeddings (CogVideoX-5b-I2V) only exist for the size the model was trained at.
        config = pipe.transformer.config
        if config.use_learned_positional_embeddings:
            scale = pipe.vae_scale_factor_spatial
            self.fixed_size = (config.sample_width * scale, config.sample_height * scale)

    def fit(self, width: int, height: int, num_frames: int) -> FittedSize:
        if self.fixed_size is None:
            return super().fit(width, height, num_frames)
        fitted = super().fit(*self.fixed_size, num_frames)
        for name, asked, used in (("width", width, fitted.width), ("height", height, fitted.height)):
            if asked != used:
                fitted.adjustments.append({"field": name, "requested": asked, "used": used, "rule": self.rule(name)})
        return fitted

    def rule(self, name: str) -> str:
        if name in ("width", "height") and self.fixed_size is not None:
            width, height = self.fixed_size
            return f"this cogvideox image-to-video model only runs at the {width}×{height} it was built for"
        return super().rule(name)
