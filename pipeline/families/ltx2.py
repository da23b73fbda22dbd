"""LTX-2: video with synchronized sound. One checkpoint does image-to-video (`LTX2ImageToVideoPipeline`) and
text-to-video (`LTX2Pipeline`); both return the frames and a stereo waveform from the model's vocoder.

Rules from the Lightricks/LTX-2 model card ("Width & height settings must be divisible by 32. Frame count must
be divisible by 8 + 1") and from `LTX2Pipeline.check_inputs` (sizes divisible by 32). Defaults from the card's
diffusers example: 768×512, 121 frames at 24 fps, 40 steps, guidance 4.0, and the pipeline's negative prompt.

The two-stage path (LTX2LatentUpsamplePipeline doubling the latents, then a second denoise with the distilled
LoRA) is not used: it needs a second checkpoint (the spatial upsampler) and a LoRA, and costs a second pass and
its memory. vidrop runs the one-stage pipeline at the requested size; its "high" preset is a larger one-stage size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vidrop.pipeline.families.base import Family, FamilyDefaults, FamilyLimits, SoundTrack


class LTX2Family(Family):
    """LTX-2: sizes in multiples of 32, 8k+1 frames, a sound track at the vocoder's rate (24 kHz stereo)."""

    name = "ltx2"
    pipeline_class_names = ("LTX2ImageToVideoPipeline", "LTX2Pipeline")
    image_pipeline_class_name = "LTX2ImageToVideoPipeline"
    text_pipeline_class_name = "LTX2Pipeline"
    shares_components = True  # the card loads Lightricks/LTX-2 into both pipelines
    frame_step = 8  # the video VAE compresses time 8×
    size_multiple = 32  # the video VAE compresses space 32×
    has_sound = True
    defaults = FamilyDefaults(
        width=768,
        height=512,
        num_frames=121,
        steps=40,
        guidance_scale=4.0,
        fps=24,
        negative_prompt="worst quality, inconsistent motion, blurry, jittery, distorted",
    )
    # 481 frames: the pipeline's max_seconds (20 s) at 24 fps.
    limits = FamilyLimits(max_width=1920, max_height=1920, max_frames=481)
    # standard: the card's example. fast: fewer steps and frames at the same size (vidrop's choice). high: a
    # larger one-stage size (vidrop's choice; the card's 1536×1024 comes from the two-stage upsampler, unused).
    presets = {
        "fast": {"steps": 20, "num_frames": 65, "width": 768, "height": 512},
        "standard": {"steps": 40, "num_frames": 121, "width": 768, "height": 512},
        "high": {"steps": 50, "num_frames": 121, "width": 1280, "height": 704},
    }
    gpu_dtype = "bfloat16"
    # Like LTX-Video's (the same 32×/8× compression); the audio latents are small beside the video's.
    denoise_bytes_per_voxel = 40.0
    decode_bytes_per_voxel = 200.0
    tiled_decode_frames = 16
    # The latents path would have to decode the audio latents too (audio VAE, vocoder): a decode OOM re-runs all.
    can_decode_latents = False

    def call_arguments(self, **kwargs) -> dict[str, Any]:
        return {**super().call_arguments(**kwargs), "frame_rate": float(kwargs["fps"])}

    def sound(self, pipe: Any, audio: Any) -> SoundTrack | None:
        """The vocoder's waveform (batch × channels × samples) at its output rate."""
        if audio is None:
            return None
        samples = audio[0].float().cpu().numpy() if hasattr(audio, "cpu") else np.asarray(audio[0])
        return SoundTrack(samples=samples.astype(np.float32), sample_rate=int(pipe.vocoder.config.output_sampling_rate))
