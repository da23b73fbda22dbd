"""Pickup latency: a complete file renamed into the inbox → its job started, from the ledger's timestamps."""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path
from typing import Any

from bench.inputs import drop, image_bytes, sidecar_bytes
from bench.processes import DaemonProcess, vidrop_env
from bench.report import Figure, LedgerReader
from bench.stats import percentile

REQUEST = {"width": 32, "height": 32, "num_frames": 1, "steps": 1, "fps": 8}


def measure(
    root: Path, model: Path, *, watch: str, drops: int, settle: float, poll: float, timeout: float
) -> dict[str, list[float]]:
    """Drop `drops` image+sidecar pairs one after another into a running daemon; latencies in seconds.

    Each drop waits for the previous job to finish, so the daemon is idle when the file arrives, and
    for a random pause first, so drops fall at every phase of the daemon's tick and poll timers.
    """
    env = vidrop_env(
        root,
        model,
        INTAKE__WATCH=watch,
        INTAKE__SETTLE_SECONDS=str(settle),
        INTAKE__POLL_SECONDS=str(poll),
        OMP_NUM_THREADS="1",
    )
    randomness = random.Random(watch)
    started, admitted = [], []
    with DaemonProcess(env) as daemon:
        daemon.wait_event("daemon_ready", timeout)
        reader = LedgerReader(root / "state" / "ledger.sqlite3")
        try:
            for index in range(drops):
                # A random phase against the daemon's timers (its tick; the poll interval when polling).
                time.sleep(randomness.uniform(0, poll if watch == "polling" else 0.5))
                folder = root / "inbox" / f"drop{index // 10}"
                drop(folder / f"d{index:03}.json", sidecar_bytes(REQUEST, seed=index))
                renamed = drop(folder / f"d{index:03}.png", image_bytes(index))
                job = reader.wait_finished(
                    f"drop{index // 10}/d{index:03}.png", timeout=timeout, process=daemon.process
                )
                if job.state != "done":
                    raise RuntimeError(f"drop {index} failed in the daemon: {daemon.tail()}")
                started.append(job.started_at - renamed)
                admitted.append(job.created_at - renamed)
        finally:
            reader.close()
    return {"started": started, "admitted": admitted}


def run(
    work: Path, model: Path, *, drops: int, settle: float, poll: float, timeout: float
) -> tuple[list[Figure], dict[str, Any]]:
    """Pickup latency with inotify events and with the polling observer."""
    figures = []
    details: dict[str, Any] = {"drops": drops, "settle_seconds": settle, "poll_seconds": poll}
    for watch, name, allowance in (("events", "inotify", settle + 0.3), ("polling", "polling", settle + poll)):
        measured = measure(work / watch, model, watch=watch, drops=drops, settle=settle, poll=poll, timeout=timeout)
        median = statistics.median(measured["started"])
        goal = (
            f"median ≤ settle + 0.3 s = {allowance:.1f} s"
            if watch == "events"
            else f"median ≤ poll + settle = {allowance:.1f} s"
        )
        figures += [
            Figure(
                "pickup",
                f"{name}: renamed → job started (settle {settle:g} s, poll {poll:g} s)",
                "s",
                measured["started"],
                goal=goal,
                met=median <= allowance,
                note=f"p95 {percentile(measured['started'], 0.95):.2f} s over {drops} drops",
            ),
            Figure("pickup", f"{name}: renamed → job queued", "s", measured["admitted"]),
        ]
        details[watch] = {key: [round(value, 4) for value in values] for key, values in measured.items()}
    return figures, details
