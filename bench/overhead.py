"""Overhead ratio: `vidrop once` against the plain diffusers loop on the same images, model, parameters and seeds.

Both run as fresh processes, alternately (plain first in even rounds, vidrop first in odd ones), so load on
a shared machine hits both alike; each round gives one paired ratio.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.inputs import write_pairs
from bench.processes import REPO, run_vidrop_once, vidrop_env
from bench.report import Figure, LedgerReader


def run_plain(model: Path, images: Path, out: Path, timeout: float) -> tuple[float, dict[str, Any]]:
    """The plain script as a fresh process; its wall time and what it printed."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "bench.plain_loop", str(model), str(images), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"the plain loop exited with {result.returncode}: {result.stderr[-3000:]}")
    return elapsed, json.loads(result.stdout.strip().splitlines()[-1])


def run_vidrop(model: Path, images: Path, root: Path, timeout: float) -> tuple[float, float]:
    """`vidrop once` on a fresh copy of the images; wall time, and the span from first job start to last finish."""
    shutil.copytree(images, root / "inbox")
    env = vidrop_env(root, model, INTAKE__SETTLE_SECONDS="0")
    elapsed = run_vidrop_once(env, timeout)
    reader = LedgerReader(root / "state" / "ledger.sqlite3")
    try:
        jobs = reader.all_jobs()
    finally:
        reader.close()
    if not jobs or any(job.state != "done" for job in jobs):
        raise RuntimeError(f"vidrop once left jobs not done: {jobs}")
    return elapsed, max(job.finished_at for job in jobs) - min(job.started_at for job in jobs)


def run(
    work: Path, model: Path, *, images: int, rounds: int, request: dict[str, Any], timeout: float
) -> tuple[list[Figure], dict[str, Any]]:
    """Alternate the two for `rounds` rounds on `images` images; per-job times and their ratios."""
    sources = work / "images"
    write_pairs(sources, images, request, size=(request["width"], request["height"]))
    plain_job, vidrop_job, ratios = [], [], []
    plain_loop, vidrop_loop, loop_ratios = [], [], []
    for index in range(rounds):
        order = ("plain", "vidrop") if index % 2 == 0 else ("vidrop", "plain")
        measured: dict[str, tuple[float, float]] = {}
        for which in order:
            if which == "plain":
                wall, printed = run_plain(model, sources, work / f"plain{index}", timeout)
                measured["plain"] = (wall, sum(printed["job_seconds"]))
            else:
                measured["vidrop"] = run_vidrop(model, sources, work / f"vidrop{index}", timeout)
        plain_job.append(measured["plain"][0] / images)
        vidrop_job.append(measured["vidrop"][0] / images)
        ratios.append(measured["vidrop"][0] / measured["plain"][0])
        plain_loop.append(measured["plain"][1] / images)
        vidrop_loop.append(measured["vidrop"][1] / images)
        loop_ratios.append(measured["vidrop"][1] / measured["plain"][1])
        shutil.rmtree(work / f"plain{index}")
        shutil.rmtree(work / f"vidrop{index}")
    what = f"{images} images, {request['width']}×{request['height']}×{request['num_frames']}, {request['steps']} steps"
    figures = [
        Figure(
            "overhead",
            f"plain loop: wall time per job ({what})",
            "s",
            plain_job,
            note="whole process: imports and model load included",
        ),
        Figure("overhead", "vidrop once: wall time per job", "s", vidrop_job, note="the same"),
        Figure(
            "overhead",
            "ratio vidrop once / plain loop (whole process)",
            "×",
            ratios,
            goal="≤ 1.05",
            met=statistics.median(ratios) <= 1.05,
        ),
        Figure("overhead", "plain loop: per job inside the loop", "s", plain_loop),
        Figure("overhead", "vidrop: per job, first job start to last job end", "s", vidrop_loop),
        Figure(
            "overhead",
            "ratio inside the loop, vidrop / plain",
            "×",
            loop_ratios,
            goal="≤ 1.05",
            met=statistics.median(loop_ratios) <= 1.05,
        ),
    ]
    return figures, {"images": images, "rounds": rounds, "request": request}
