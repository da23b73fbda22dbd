"""Memory over many jobs: the daemon's resident memory after 10 jobs and after 200, in one `vidrop run`."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench.inputs import write_pairs
from bench.processes import DaemonProcess, vidrop_env
from bench.report import Figure

MIB = 1024 * 1024
SAMPLES = 5


def idle_rss(daemon: DaemonProcess) -> float:
    """The median of a few RSS readings once the daemon is idle, in MiB."""
    readings = []
    for _ in range(SAMPLES):
        readings.append(daemon.rss_bytes() / MIB)
        time.sleep(0.1)  # spacing between readings of a process that is not awaited
    return statistics.median(readings)


def run(
    work: Path, model: Path, *, jobs: int, first: int, request: dict[str, Any], timeout: float
) -> tuple[list[Figure], dict[str, Any]]:
    """Drop jobs in batches of `first` into one daemon; RSS after each batch, so after `first` and after `jobs`."""
    env = vidrop_env(work, model, INTAKE__SETTLE_SECONDS="0", OMP_NUM_THREADS="1")
    curve: dict[int, float] = {}
    with DaemonProcess(env) as daemon:
        daemon.wait_event("daemon_ready", timeout)
        done = 0
        while done < jobs:
            batch = min(first, jobs - done)
            write_pairs(work / "drops" / f"batch{done:04}", batch, request, first_index=done)
            # Written beside the inbox, then moved in as a whole folder, the way `mv` of a finished export does.
            (work / "drops" / f"batch{done:04}").rename(work / "inbox" / f"batch{done:04}")
            done += batch
            deadline = time.monotonic() + timeout
            while daemon.count("job_finished", state="done") < done:
                if daemon.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{done} jobs did not finish: {daemon.tail()}")
                time.sleep(0.05)
            if daemon.count("job_finished", state="failed"):
                raise RuntimeError(f"a job failed: {daemon.tail()}")
            curve[done] = idle_rss(daemon)
    early = min(curve)
    growth = curve[jobs] - curve[early]
    # Noise: the largest move of RSS from one batch to the next. A leak adds up batch after batch, so over
    # the whole run it grows well beyond any single swing; allocator and cache swings do not add up.
    counts = sorted(curve)
    swings = [abs(curve[b] - curve[a]) for a, b in zip(counts, counts[1:])]
    noise = max(swings) if swings else 0.0
    slope = statistics.linear_regression(counts, [curve[c] for c in counts]).slope * 100 if len(counts) > 2 else 0.0
    figures = [
        Figure("memory", f"RSS after {early} jobs", "MiB", [curve[early]], note=f"median of {SAMPLES} readings"),
        Figure("memory", f"RSS after {jobs} jobs", "MiB", [curve[jobs]], note=f"median of {SAMPLES} readings"),
        Figure(
            "memory",
            f"growth from job {early} to job {jobs}",
            "MiB",
            [growth],
            goal="no growth beyond noise",
            met=growth <= max(1.0, noise),
            note=f"largest batch-to-batch swing {noise:.1f} MiB; trend {slope:+.1f} MiB per 100 jobs",
        ),
    ]
    return figures, {"curve_mib": {str(count): round(value, 2) for count, value in curve.items()}, "request": request}
