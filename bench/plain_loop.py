"""What a user would write instead of vidrop: load the pipeline once, call it on each image, export_to_video.

Run as a script by the overhead benchmark:
    python -m bench.plain_loop MODEL_DIR IMAGES_DIR OUT_DIR
Each image `NAME.png` has its request beside it in `NAME.json` (prompt, size, frames, steps, fps, seed).
Prints one JSON line: the load time and each generation's time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from diffusers import LTXImageToVideoPipeline
from diffusers.utils import export_to_video
from PIL import Image

GUIDANCE_SCALE = 3.0  # LTX-Video's usual value, the one vidrop uses for the family
NEGATIVE_PROMPT = "worst quality, inconsistent motion, blurry, jittery, distorted"


def main(model: str, images: Path, out: Path) -> None:
    started = time.monotonic()
    pipe = LTXImageToVideoPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    seconds = []
    for path in sorted(images.glob("*.png")):
        job_started = time.monotonic()
        request = json.loads(path.with_suffix(".json").read_text())
        image = Image.open(path).convert("RGB")
        torch.manual_seed(request["seed"])
        video = pipe(
            image=image,
            prompt=request["prompt"],
            negative_prompt=NEGATIVE_PROMPT,
            width=request["width"],
            height=request["height"],
            num_frames=request["num_frames"],
            num_inference_steps=request["steps"],
            guidance_scale=GUIDANCE_SCALE,
            frame_rate=request["fps"],
            generator=torch.Generator().manual_seed(request["seed"]),
        ).frames[0]
        export_to_video(video, str(out / f"{path.stem}.mp4"), fps=request["fps"])
        seconds.append(time.monotonic() - job_started)
    print(json.dumps({"load_seconds": loaded - started, "job_seconds": seconds}))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
