"""`make bench`: run every benchmark, print one table, write bench/results.json.

    python -m bench [--quick] [--only NAME ...] [--output FILE] [--workdir DIR] [--scale-timeout SECONDS]
    python -m bench --markdown bench/results.json    # an earlier run's table, for docs/performance.md

--quick runs each benchmark at a tiny size (the smoke test uses it); the figures it gives mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.report import Figure, figures_to_dicts

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"
BENCHMARKS = ("overhead", "pickup", "scale", "encoding", "memory", "gpu")


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark runs: the full sizes of the issue, or tiny ones for the smoke test."""

    overhead_images: int
    overhead_rounds: int
    overhead_request: dict[str, Any]
    pickup_drops: int
    pickup_settle: float
    pickup_poll: float
    scale_folders: int
    scale_pairs_per_folder: int
    scale_idle_seconds: float
    encoding_sizes: list[tuple[int, int, int]]
    encoding_repeats: int
    memory_jobs: int
    memory_first: int
    memory_request: dict[str, Any] = field(default_factory=dict)
    scale_timeout: float = 60.0  # what a daemon gets to catch up with the tree; beyond it the figure is "more than"
    timeout: float = 300.0  # a guard against hangs, never reached by a healthy run


FULL = Sizes(
    # One generation of the demo model at this size takes about 0.7 s on an idle 2-core CPU and 2 s or more
    # while others share it, most of it denoising; fewer steps would make the fixed cost per job look larger
    # than it is next to a real model.
    overhead_images=20,
    overhead_rounds=3,
    overhead_request={"width": 64, "height": 64, "num_frames": 17, "steps": 10, "fps": 8},
    # Shorter than the shipped 2 s and 5 s so that 2 × 50 drops fit in the run; the goals are relative to them.
    pickup_drops=50,
    pickup_settle=0.5,
    pickup_poll=1.0,
    scale_folders=1000,
    scale_pairs_per_folder=50,
    scale_idle_seconds=60,
    encoding_sizes=[(512, 512, 16), (1024, 576, 25)],
    encoding_repeats=5,
    memory_jobs=200,
    memory_first=10,
    memory_request={"width": 32, "height": 32, "num_frames": 1, "steps": 1, "fps": 8},
)
QUICK = Sizes(
    overhead_images=2,
    overhead_rounds=1,
    overhead_request={"width": 32, "height": 32, "num_frames": 9, "steps": 1, "fps": 8},
    pickup_drops=3,
    pickup_settle=0.2,
    pickup_poll=0.5,
    scale_folders=3,
    scale_pairs_per_folder=4,
    scale_idle_seconds=1,
    encoding_sizes=[(64, 64, 4)],
    encoding_repeats=1,
    memory_jobs=4,
    memory_first=2,
    memory_request={"width": 32, "height": 32, "num_frames": 1, "steps": 1, "fps": 8},
    scale_timeout=300.0,
)


def run_benchmark(name: str, work: Path, model: Path, sizes: Sizes, quick: bool) -> tuple[list[Figure], Any]:
    """One benchmark by name: its figures and its details."""
    if name == "overhead":
        from bench import overhead

        return overhead.run(
            work,
            model,
            images=sizes.overhead_images,
            rounds=sizes.overhead_rounds,
            request=sizes.overhead_request,
            timeout=sizes.timeout * 4,
        )
    if name == "pickup":
        from bench import pickup

        return pickup.run(
            work,
            model,
            drops=sizes.pickup_drops,
            settle=sizes.pickup_settle,
            poll=sizes.pickup_poll,
            timeout=sizes.timeout,
        )
    if name == "scale":
        from bench import scale

        return scale.run(
            work,
            model,
            folders=sizes.scale_folders,
            pairs_per_folder=sizes.scale_pairs_per_folder,
            idle_seconds=sizes.scale_idle_seconds,
            timeout=sizes.scale_timeout,
        )
    if name == "encoding":
        from bench import encoding

        return encoding.run(work, sizes=sizes.encoding_sizes, repeats=sizes.encoding_repeats)
    if name == "memory":
        from bench import memory

        return memory.run(
            work,
            model,
            jobs=sizes.memory_jobs,
            first=sizes.memory_first,
            request=sizes.memory_request,
            timeout=sizes.timeout,
        )
    if name == "gpu":
        return run_gpu(work, model, quick)
    raise ValueError(f"unknown benchmark {name!r}")


def run_gpu(work: Path, model: Path, quick: bool) -> tuple[list[Figure], Any]:
    """The GPU run-book where there is a GPU; on the CPU only its tiny check (--quick), else a skip."""
    from bench import gpu

    problem = gpu.cuda_problem("cuda")
    if problem and not quick:
        return [], {"skipped": "no CUDA device; run `python -m bench.gpu [MODEL]` on a GPU machine"}
    output = work / "gpu-results.json"
    argv = ["--output", str(output)]
    if problem:  # quick, on the CPU: the run-book's own path with the tiny model
        argv = [
            str(model),
            "--device",
            "cpu",
            "--width",
            "32",
            "--height",
            "32",
            "--frames",
            "2",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--compile",
            "off",
            "--offline",
            *argv,
        ]
    status = gpu.main(argv)
    if status != 0:
        raise RuntimeError(f"bench.gpu exited with {status}")
    document = json.loads(output.read_text())
    figures = [
        Figure(
            "gpu",
            f"{run['dtype']}, compile {'on' if run['compile'] else 'off'}: seconds per video",
            "s",
            [run["seconds_per_video"]["median"]],
            note=f"{run['videos_per_hour']} videos/h, peak {run['peak_memory_bytes'] / 2**30:.2f} GiB",
        )
        for run in document["runs"]
    ]
    return figures, document


def print_table(figures: list[dict[str, Any]], stream=sys.stdout) -> None:
    """One table: benchmark, figure, median [min-max], goal and whether it is met."""
    headers = ("benchmark", "figure", "median", "min", "max", "n", "unit", "goal", "met")
    rows = []
    for figure in figures:
        met = {True: "yes", False: "NO", None: ""}[figure["met"]]
        rows.append(
            (
                figure["benchmark"],
                figure["name"],
                _number(figure["median"]),
                _number(figure["min"]),
                _number(figure["max"]),
                str(figure["n"]),
                figure["unit"],
                figure["goal"],
                met,
            )
        )
    widths = [max(len(str(row[index])) for row in [headers, *rows]) for index in range(len(headers))]
    for row in [headers, tuple("-" * width for width in widths), *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip(), file=stream)
    for figure in figures:
        if figure["note"]:
            print(f"  {figure['benchmark']} / {figure['name']}: {figure['note']}", file=stream)


def markdown_table(figures: list[dict[str, Any]]) -> str:
    """The same table in Markdown, for docs/performance.md."""
    lines = ["| benchmark | figure | median | min – max | n | goal | met |", "|---|---|---|---|---|---|---|"]
    for figure in figures:
        met = {True: "yes", False: "**no**", None: ""}[figure["met"]]
        value = "-" if figure["median"] is None else f"{_number(figure['median'])} {figure['unit']}"
        spread = "-" if figure["min"] is None else f"{_number(figure['min'])} – {_number(figure['max'])}"
        name = figure["name"] + (f" ({figure['note']})" if figure["note"] else "")
        lines.append(
            f"| {figure['benchmark']} | {name} | {value} | {spread} | {figure['n']} | {figure['goal']} | {met} |"
        )
    return "\n".join(lines)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _machine() -> dict[str, Any]:
    import torch

    return {
        "cpus": os.cpu_count(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="vidrop's benchmarks")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that every benchmark runs")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--workdir", type=Path, help="where inputs and outputs go (default: a temporary folder)")
    parser.add_argument(
        "--scale-timeout",
        type=float,
        help="seconds a daemon gets to catch up with the big tree "
        f"(default {FULL.scale_timeout:g}, so that the whole run stays under 15 minutes)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        metavar="RESULTS",
        help="print the table of an earlier run's results.json in Markdown, and run nothing",
    )
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table(json.loads(args.markdown.read_text())["figures"]))
        return 0
    sizes = QUICK if args.quick else FULL
    if args.scale_timeout:
        sizes = dataclasses.replace(sizes, scale_timeout=args.scale_timeout)
    work_root = Path(tempfile.mkdtemp(prefix="vidrop-bench-", dir=args.workdir))
    started = time.monotonic()
    document: dict[str, Any] = {"quick": args.quick, "machine": _machine(), "benchmarks": {}, "figures": []}
    failed = False
    try:
        import diffusers
        import transformers

        from vidrop.pipeline.demo_model import write_demo_model

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        model = write_demo_model(work_root / "model", "ltx")
        for name in args.only or BENCHMARKS:
            print(f"== {name}", file=sys.stderr, flush=True)
            benchmark_started = time.monotonic()
            try:
                figures, details = run_benchmark(name, work_root / name, model, sizes, args.quick)
            except Exception as exc:  # one benchmark's failure is reported; the others still run
                traceback.print_exc()
                failed = True
                document["benchmarks"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            document["figures"] += figures_to_dicts(figures)
            document["benchmarks"][name] = {
                "seconds": round(time.monotonic() - benchmark_started, 1),
                "details": details,
            }
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    document["machine"]["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    document["total_seconds"] = round(time.monotonic() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print_table(document["figures"])
    for name, outcome in document["benchmarks"].items():
        if "error" in outcome:
            print(f"  {name}: FAILED: {outcome['error']}")
        elif "skipped" in outcome.get("details", {}):
            print(f"  {name}: skipped: {outcome['details']['skipped']}")
    print(
        f"total {document['total_seconds']:.0f} s; load average {document['machine']['load_average']} at start, "
        f"{document['machine']['load_average_at_end']} at end; wrote {args.output}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
