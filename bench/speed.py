"""The speed levers on the CPU with the tiny models: do they engage, and what do they change?

    python -m bench.speed [--families wan,ltx,cogvideox] [--jobs 3] [--steps 10] [--no-compile] [--output FILE]

For each family and each lever that applies to it on the CPU, it runs `--jobs` same-size jobs through vidrop's
own generator (pipeline/speed.py applies the lever) and compares them with the plain run in the same process:
denoiser forward calls and attention computations (made and skipped), recompiles over the run (dynamo's
unique graphs after the first job: zero means no recompile), wall time per job as a ratio of the plain one,
and PSNR of the frames against the plain run's on the same seed (inf: identical). These figures show that
the levers engage and what they cost in fidelity, not GPU speed: bench/gpu.py measures that where a GPU is.
Written to bench/speed-results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SIZES = {"ltx2": 64}
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "speed-results.json"
# Family → the levers that apply on a CPU (fp8 and the CUDA attention kernels need a GPU; FirstBlockCache needs
# two blocks or more, and the tiny models have one).
CPU_LEVERS: dict[str, list[dict[str, str]]] = {
    "wan": [{"cache": "pab"}, {"attention": "_native_math"}, {"compile": "regional"}],
    "ltx": [{"cache": "pab"}, {"attention": "_native_math"}, {"compile": "regional"}],
    "cogvideox": [{"cache": "pab"}, {"cache": "faster"}, {"compile": "full"}],
    "ltx2": [{"attention": "_native_math"}, {"compile": "regional"}],  # no cache runs on LTX-2 (pipeline/speed.py)
    "hunyuan1.5": [{"cache": "pab"}, {"attention": "_native_math"}, {"compile": "regional"}],
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(CPU_LEVERS))
    parser.add_argument("--jobs", type=int, default=3, help="same-size jobs per configuration")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="leave out compile (minutes of warm-up on a CPU)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the tiny models are written")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return parser


def psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio of uint8 frames against the reference, in dB (inf: identical)."""
    error = np.mean((frames.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return math.inf if error == 0 else 10 * math.log10(255.0**2 / error)


def run_configuration(model: Path, levers: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """Load the tiny model with these levers, run `jobs` same-size jobs; their speed facts, times and frames."""
    from PIL import Image
    from torch._dynamo.utils import counters

    from vidrop.config.settings import LimitSettings, MemorySettings
    from vidrop.pipeline.generate import VideoGenerator
    from vidrop.pipeline.loader import load_model
    from vidrop.pipeline.speed import SpeedLevers

    loaded = load_model(str(model), family="auto", device="cpu", dtype="auto", offline=True)
    memory = MemorySettings(mode="as_is", idle_unload_seconds=0, drift_restart_gb=0)
    generator = VideoGenerator(
        loaded, fit="crop", limits=LimitSettings(), memory=memory, speed=SpeedLevers(**{"compile": "off", **levers})
    )
    mode = "image" if "image" in generator.modes() else "text"
    size = SIZES.get(loaded.family.name, 32)  # LTX-2's VAE needs 64 px to keep a latent pixel after its 32×
    request = {
        "prompt": "red square",
        "width": size,
        "height": size,
        "num_frames": 9,
        "steps": args.steps,
        "mode": mode,
    }
    params = generator.resolve(request)
    image = Image.new("RGB", (40, 32), (200, 30, 30)) if mode == "image" else None
    seconds, graphs, results = [], [], []
    for job in range(args.jobs):
        started = time.monotonic()
        results.append(generator.generate(image, params, seed=7))
        seconds.append(time.monotonic() - started)
        graphs.append(counters["stats"]["unique_graphs"])
    speed = results[-1].facts["speed"]
    return {
        "levers": levers,
        "ran_with": speed["levers"],
        "dropped": speed["dropped"],
        "denoiser_calls": speed["denoiser_calls"],
        "attention_calls": speed["attention_calls"],
        "attention_skipped": speed["attention_skipped"],
        "compile_warmup_seconds": results[0].facts["speed"]["compile_warmup_seconds"],
        "recompiles_after_first": graphs[-1] - graphs[0],
        "seconds": seconds,
        "frames": results[-1].frames,
    }


def bench_family(family: str, model: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The plain run, then each lever; figures relative to the plain run."""
    plain = run_configuration(model, {}, args)
    rows = []
    for levers in CPU_LEVERS[family]:
        if args.no_compile and "compile" in levers:
            continue
        run = run_configuration(model, levers, args)
        # The first job of a compiled run is its warm-up; the others are the steady state.
        steady = run["seconds"][1:] if "compile" in levers and len(run["seconds"]) > 1 else run["seconds"]
        ratio = statistics.median(steady) / statistics.median(plain["seconds"])
        value = psnr(run["frames"], plain["frames"])
        rows.append(
            {
                "family": family,
                "lever": ", ".join(f"{name}={value}" for name, value in levers.items()),
                "denoiser_calls": run["denoiser_calls"],
                "plain_denoiser_calls": plain["denoiser_calls"],
                "attention_calls": run["attention_calls"],
                "plain_attention_calls": plain["attention_calls"],
                "attention_skipped": run["attention_skipped"],
                "compile_warmup_seconds": run["compile_warmup_seconds"],
                "recompiles_after_first": run["recompiles_after_first"],
                "time_ratio_vs_plain": round(ratio, 2),
                "psnr_db_vs_plain": None if math.isinf(value) else round(value, 1),
                "identical_to_plain": math.isinf(value),
                "dropped": run["dropped"],
            }
        )
        print(_line(rows[-1]), flush=True)
    return rows


def _line(row: dict[str, Any]) -> str:
    psnr_text = "identical" if row["identical_to_plain"] else f"{row['psnr_db_vs_plain']} dB"
    warmup = row["compile_warmup_seconds"]
    return (
        f"{row['family']:10} {row['lever']:26} "
        f"attention {row['attention_calls']!s:>4}/{row['plain_attention_calls']:<4} "
        f"(skipped {row['attention_skipped']!s:>4}) "
        f"denoiser calls {row['denoiser_calls']}/{row['plain_denoiser_calls']}"
        f"  recompiles {row['recompiles_after_first']}  time x{row['time_ratio_vs_plain']}  PSNR {psnr_text}"
        + (f"  warm-up {warmup:.1f} s" if warmup else "")
    )


def main(argv: list[str] | None = None) -> int:
    import diffusers
    import torch

    from vidrop.pipeline.demo_model import write_demo_model

    args = _parser().parse_args(argv)
    families = [name.strip() for name in args.families.split(",") if name.strip()]
    unknown = [name for name in families if name not in CPU_LEVERS]
    if unknown:
        print(f"bench/speed.py: no CPU levers for {', '.join(unknown)} (known: {', '.join(CPU_LEVERS)})")
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        for family in families:
            model = root / family
            if not (model / "model_index.json").exists():
                write_demo_model(model, family)
            rows.extend(bench_family(family, model, args))
    document = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "jobs_per_configuration": args.jobs,
        "steps": args.steps,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
