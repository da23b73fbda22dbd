"""The GPU run-book: time a real model where the daemon will run it, for the day a GPU is there.

    python -m bench.gpu [MODEL] [--steps 50] [--width 512 --height 512 --frames 16] [--repeats 3]

MODEL is a local folder or a Hugging Face id (default ali-vilab/i2vgen-xl). For each dtype (float16,
bfloat16) with and without torch.compile, with PyTorch's SDPA attention, it loads the model through
vidrop's own loader and generator, runs one warm-up video, then `--repeats` timed ones, and reports
seconds per video, videos per hour and peak VRAM, printed and written to bench/gpu-results.json.

Without a CUDA device it refuses (exit status 69) and says so; `--device cpu` runs the same path on the
CPU in float32, which is how the tests check this script with the tiny demo model.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

EX_UNAVAILABLE = 69
DEFAULT_MODEL = "ali-vilab/i2vgen-xl"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "gpu-results.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="local folder or Hugging Face model id")
    parser.add_argument("--family", default="auto", choices=("auto", "ltx", "i2vgen-xl"))
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (float32, to check the run-book)")
    parser.add_argument("--dtypes", default="float16,bfloat16", help="comma-separated; the CPU always uses float32")
    parser.add_argument("--compile", choices=("both", "on", "off"), default="both", help="torch.compile the denoiser")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="timed videos per configuration")
    parser.add_argument("--offline", action="store_true", help="never contact the Hugging Face hub")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return parser


def cuda_problem(device: str) -> str | None:
    """Why this device cannot be benchmarked, or None."""
    import torch

    if not device.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return (
            f"bench/gpu.py times the model on a CUDA GPU, and torch {torch.__version__} sees none "
            f"(torch.cuda.is_available() is False; CUDA build: {torch.version.cuda or 'no, a CPU-only build'}). "
            "Run it on a machine with an NVIDIA GPU, its driver and a CUDA build of torch "
            "(`make` installs one where nvidia-smi is present), or pass --device cpu to check the run-book "
            "itself with a tiny model (`vidrop demo-model DIR`)."
        )
    return None


def use_sdpa(denoiser: Any) -> str:
    """Ask diffusers for PyTorch's scaled_dot_product_attention; name the attention processors in use."""
    try:
        denoiser.set_attention_backend("native")
    except (AttributeError, ValueError, NotImplementedError):
        pass  # older processors (AttnProcessor2_0) call scaled_dot_product_attention directly
    processors = getattr(denoiser, "attn_processors", {})
    return ", ".join(sorted({type(processor).__name__ for processor in processors.values()})) or "unknown"


def time_configuration(args: argparse.Namespace, dtype: str, compiled: bool) -> dict[str, Any]:
    """Load the model in this dtype, optionally compile its denoiser, warm up, time `repeats` videos."""
    import torch
    from PIL import Image

    from bench.encoding import moving_frames
    from vidrop.config.settings import LimitSettings, MemorySettings
    from vidrop.pipeline.generate import VideoGenerator
    from vidrop.pipeline.loader import load_model

    loaded = load_model(args.model, family=args.family, device=args.device, dtype=dtype, offline=args.offline)
    pipe = loaded.pipe
    denoiser_name = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
    attention = use_sdpa(getattr(pipe, denoiser_name))
    if compiled:
        setattr(pipe, denoiser_name, torch.compile(getattr(pipe, denoiser_name)))
    # As loaded, nothing offloaded, never unloaded or restarted: the model's own speed and footprint.
    memory = MemorySettings(mode="as_is", idle_unload_seconds=0, drift_restart_gb=0)
    generator = VideoGenerator(loaded, fit="crop", limits=LimitSettings(), memory=memory)
    params = generator.resolve(
        {
            "prompt": "a slow camera push-in on a lighthouse at dusk",
            "width": args.width,
            "height": args.height,
            "num_frames": args.frames,
            "steps": args.steps,
        }
    )
    image = Image.fromarray(moving_frames(1, args.height, args.width)[0])
    started = time.monotonic()
    generator.generate(image, params, seed=0)  # warm-up: kernels, caches, and the compilation when compiled
    warmup = time.monotonic() - started
    seconds, peaks = [], []
    for repeat in range(args.repeats):
        started = time.monotonic()
        result = generator.generate(image, params, seed=repeat + 1)
        seconds.append(time.monotonic() - started)
        peaks.append(result.facts["peak_memory_bytes"])
    median = statistics.median(seconds)
    run = {
        "dtype": dtype,
        "compile": compiled,
        "attention": attention,
        "family": loaded.family.name,
        "load_seconds": round(loaded.load_seconds, 2),
        "warmup_seconds": round(warmup, 2),
        "seconds_per_video": {
            "median": round(median, 3),
            "min": round(min(seconds), 3),
            "max": round(max(seconds), 3),
            "n": len(seconds),
        },
        "videos_per_hour": round(3600 / median, 1),
        "peak_memory_bytes": max(peaks),
        "peak_memory_is": "VRAM (torch.cuda.max_memory_allocated)"
        if args.device.startswith("cuda")
        else "process peak RSS",
        "request": {
            "width": params.width,
            "height": params.height,
            "num_frames": params.num_frames,
            "steps": params.steps,
        },
    }
    del generator, loaded, pipe
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return run


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = cuda_problem(args.device)
    if problem:
        print(f"bench/gpu.py: {problem}", file=sys.stderr)
        return EX_UNAVAILABLE
    import diffusers
    import torch

    dtypes = ["float32"] if args.device == "cpu" else [name.strip() for name in args.dtypes.split(",") if name.strip()]
    compiles = {"both": [False, True], "on": [True], "off": [False]}[args.compile]
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor()
    runs = []
    for dtype in dtypes:
        for compiled in compiles:
            run = time_configuration(args, dtype, compiled)
            runs.append(run)
            print(
                f"{dtype:9} compile={'on ' if compiled else 'off'} {run['seconds_per_video']['median']:9.2f} s/video "
                f"{run['videos_per_hour']:8.1f} videos/h  peak {run['peak_memory_bytes'] / 2**30:6.2f} GiB  "
                f"({run['attention']})",
                flush=True,
            )
    document = {
        "model": args.model,
        "device": args.device,
        "device_name": device_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
