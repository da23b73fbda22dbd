"""The GPU run-book: time a real model where the daemon will run it, for the day a GPU is there.

    python -m bench.gpu [MODEL] [--steps 50] [--width 512 --height 512 --frames 16] [--repeats 3]

MODEL is a local folder or a Hugging Face id (default ali-vilab/i2vgen-xl). For each dtype (float16,
bfloat16) with and without torch.compile, with PyTorch's SDPA attention, it loads the model through
vidrop's own loader and generator, runs one warm-up video, then `--repeats` timed ones, and reports
seconds per video, videos per hour and peak VRAM, printed and written to bench/gpu-results.json.

`--matrix` times the speed levers instead (pipeline/speed.py, README "Speed"): for the model's family, the plain
run and each lever that applies on this GPU (regional/full compile, flash/sage attention where installed, each
step cache, fp8 + compile), through vidrop's generator in the configured dtype: seconds per video, videos per
hour, peak VRAM, warm-up (the first video, compilation included), and PSNR/SSIM of the frames against the
plain run on the same seed. Levers that do not apply are listed with check_plan's reason. Written to
bench/gpu-speed-results.json.

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
    parser.add_argument("--family", default="auto", help="auto, or a family name (ltx, wan, cogvideox, ...)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (float32, to check the run-book)")
    parser.add_argument("--dtypes", default="float16,bfloat16", help="comma-separated; the CPU always uses float32")
    parser.add_argument("--compile", choices=("both", "on", "off"), default="both", help="torch.compile the denoiser")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="timed videos per configuration")
    parser.add_argument("--offline", action="store_true", help="never contact the Hugging Face hub")
    parser.add_argument("--output", type=Path, default=None, help="default bench/gpu-results.json (--matrix: ...)")
    parser.add_argument("--matrix", action="store_true", help="the speed levers' matrix for this model's family")
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
    from vidrop.pipeline.speed import SpeedLevers

    loaded = load_model(args.model, family=args.family, device=args.device, dtype=dtype, offline=args.offline)
    pipe = loaded.pipe
    denoiser_name = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
    attention = use_sdpa(getattr(pipe, denoiser_name))
    if compiled:
        setattr(pipe, denoiser_name, torch.compile(getattr(pipe, denoiser_name)))
    # As loaded, nothing offloaded, never unloaded or restarted: the model's own speed and footprint.
    memory = MemorySettings(mode="as_is", idle_unload_seconds=0, drift_restart_gb=0)
    # The plain plan: this run-book compiles (or not) itself; `--matrix` times vidrop's levers.
    plain = SpeedLevers(compile="off", attention="native")
    generator = VideoGenerator(loaded, fit="crop", limits=LimitSettings(), memory=memory, speed=plain)
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
    if args.matrix:
        return lever_matrix(args)
    args.output = args.output or DEFAULT_OUTPUT
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


# Every lever the matrix tries; check_plan drops those that do not apply to the family or this GPU.
MATRIX_LEVERS: list[dict[str, str]] = [
    {"compile": "regional"},
    {"compile": "full"},
    {"attention": "flash"},
    {"attention": "sage"},
    {"attention": "_native_cudnn"},
    {"cache": "first_block"},
    {"cache": "pab"},
    {"cache": "faster"},
    {"quantize": "fp8", "compile": "regional"},
    {"quantize": "fp8", "compile": "full"},
]
MATRIX_OUTPUT = Path(__file__).resolve().parent / "gpu-speed-results.json"


def ssim(frames: Any, reference: Any) -> float:
    """Mean SSIM over frames (whole-frame statistics per frame and channel; a coarse but honest figure)."""
    import numpy as np

    x, y = frames.astype(np.float64), reference.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = x.mean(axis=(1, 2)), y.mean(axis=(1, 2))
    vx, vy = x.var(axis=(1, 2)), y.var(axis=(1, 2))
    cov = ((x - mx[:, None, None]) * (y - my[:, None, None])).mean(axis=(1, 2))
    return float((((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean())


def time_levers(args: argparse.Namespace, levers: dict[str, str]) -> tuple[dict[str, Any], Any]:
    """One matrix cell: load with the levers, a warm-up video, then `repeats` timed ones; the row and frames."""
    import torch
    from PIL import Image

    from bench.encoding import moving_frames
    from vidrop.config.settings import LimitSettings, MemorySettings
    from vidrop.pipeline.generate import VideoGenerator
    from vidrop.pipeline.loader import load_model
    from vidrop.pipeline.speed import SpeedLevers

    dtype = "float32" if args.device == "cpu" else args.dtypes.split(",")[-1].strip()
    loaded = load_model(args.model, family=args.family, device=args.device, dtype=dtype, offline=args.offline)
    memory = MemorySettings(mode="as_is", idle_unload_seconds=0, drift_restart_gb=0)
    plan = SpeedLevers(**{"compile": "off", "attention": "native", **levers})
    generator = VideoGenerator(loaded, fit="crop", limits=LimitSettings(), memory=memory, speed=plan)
    request = {"prompt": "a slow camera push-in on a lighthouse at dusk", "steps": args.steps}
    params = generator.resolve({**request, "width": args.width, "height": args.height, "num_frames": args.frames})
    image = Image.fromarray(moving_frames(1, args.height, args.width)[0])
    started = time.monotonic()
    first = generator.generate(image, params, seed=0)
    warmup = time.monotonic() - started
    seconds, peaks = [], []
    for _ in range(args.repeats):
        started = time.monotonic()
        result = generator.generate(image, params, seed=0)
        seconds.append(time.monotonic() - started)
        peaks.append(result.facts["peak_memory_bytes"])
    median = statistics.median(seconds)
    row = {
        "family": loaded.family.name,
        "dtype": dtype,
        "levers": levers,
        "speed": result.facts["speed"],
        "warmup_seconds": round(warmup, 2),
        "compile_warmup_seconds": first.facts["speed"]["compile_warmup_seconds"],
        "seconds_per_video": round(median, 3),
        "videos_per_hour": round(3600 / median, 1),
        "peak_memory_bytes": max(peaks),
    }
    del generator, loaded
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row, result.frames


def lever_matrix(args: argparse.Namespace) -> int:
    """The plain run and each lever that applies, against the plain run; printed and written as JSON."""
    from bench.speed import psnr
    from vidrop.pipeline.loader import inspect_model
    from vidrop.pipeline.speed import Device, SpeedLevers, check_plan

    info = inspect_model(args.model, family=args.family, device=args.device, dtype="auto", offline=args.offline)
    device = Device.of(info.device)
    plain, reference = time_levers(args, {})
    rows, refused = [plain], []
    for levers in MATRIX_LEVERS:
        problems = check_plan("bench", info.family.name, SpeedLevers(**levers), device)
        if problems:
            refused.append({"levers": levers, "why": problems})
            continue
        row, frames = time_levers(args, levers)
        row["speedup_vs_plain"] = round(plain["seconds_per_video"] / row["seconds_per_video"], 2)
        value = psnr(frames, reference)
        row["psnr_db_vs_plain"] = None if value == float("inf") else round(value, 1)
        row["ssim_vs_plain"] = round(ssim(frames, reference), 4)
        rows.append(row)
        print(
            f"{info.family.name:10} {json.dumps(levers):45} {row['seconds_per_video']:8.2f} s/video "
            f"{row['videos_per_hour']:8.1f}/h x{row['speedup_vs_plain']:<5} "
            f"peak {row['peak_memory_bytes'] / 2**30:6.2f} GiB "
            f"warm-up {row['warmup_seconds']:.1f} s  PSNR {row['psnr_db_vs_plain']}  SSIM {row['ssim_vs_plain']}",
            flush=True,
        )
    output = args.output or MATRIX_OUTPUT
    output.parent.mkdir(parents=True, exist_ok=True)
    document = {"model": args.model, "device": info.device, "family": info.family.name, "rows": rows}
    output.write_text(json.dumps({**document, "refused": refused}, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
