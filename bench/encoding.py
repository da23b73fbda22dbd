"""Encoding and thumbnails: the daemon's own commit (MP4, container check, thumbnail, preview, manifest, fsyncs,
renames).

Measured through `Outbox.commit_success`, the code every finished job goes through, on synthetic frames
that move like a video (a drifting gradient with texture and some noise), against the reference GPU time.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import Figure
from vidrop.config.vocabulary import DEFAULT_X264_PRESET
from vidrop.daemon.outbox import Outbox
from vidrop.pipeline.encode import X264_CRF, write_video
from vidrop.pipeline.generate import GenerationResult, JobParams

# The preset the shipped settings used before output.x264_preset: the file sizes are compared with it.
BEFORE_PRESET = "medium"
# About 52 s for one 512×512, 16-frame, 50-step I2VGen-XL video on an RTX 4090, as published for this
# kind of service; the share of it that the daemon's own writing takes is what matters.
REFERENCE_GPU_SECONDS = 52.0


def moving_frames(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 frames (F×H×W×3) of a drifting pattern: compresses like footage, neither flat nor pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    for index in range(frames):
        shift = 6.0 * index
        red = 128 + 100 * np.sin((x + shift) / 37.0) * np.cos(y / 53.0)
        green = 128 + 100 * np.sin((y - shift) / 29.0)
        blue = 128 + 60 * np.cos((x + y + 2 * shift) / 41.0)
        frame = np.stack([red, green, blue], axis=-1) + rng.normal(0, 2, size=(height, width, 3))
        video[index] = np.clip(frame, 0, 255).astype(np.uint8)
    return video


def time_commit(
    work: Path, frames: np.ndarray, *, repeats: int, fps: int = 16
) -> tuple[list[float], list[float], dict[str, int]]:
    """Seconds per commit of these frames (video + check + thumbnail + preview + manifest), of the H.264
    encoding alone, and the MP4's bytes at the shipped preset and at the one used before."""
    count, height, width = frames.shape[:3]
    params = JobParams(
        prompt="bench",
        negative_prompt="",
        width=width,
        height=height,
        num_frames=count,
        steps=50,
        guidance_scale=9.0,
        fps=fps,
        format="mp4",
        seed=1,
    )
    result = GenerationResult(frames=frames, facts={"frames": count})
    manifest = {"job_id": "bench", "state": "done", "parameters": params.to_dict(), "timings": {}}
    work.mkdir(parents=True, exist_ok=True)  # the outbox root must exist: a missing one means an unmounted share
    outbox = Outbox(work)  # the shipped preset, as the daemon's
    seconds, encoding = [], []
    for index in range(repeats + 1):
        names = outbox.names_for(f"size{width}x{height}/clip{index}.png")
        started = time.perf_counter()
        outbox.commit_success(names=names, result=result, params=params, manifest=manifest)
        committed = time.perf_counter()
        write_video(frames, work / f"encode-only{index}.mp4", fps=fps, fmt="mp4")
        if index:  # the first one warms up ffmpeg's binary and the page cache
            seconds.append(committed - started)
            encoding.append(time.perf_counter() - committed)
    write_video(frames, work / "before.mp4", fps=fps, fmt="mp4", x264_preset=BEFORE_PRESET)
    sizes = {
        DEFAULT_X264_PRESET: (work / "encode-only0.mp4").stat().st_size,
        BEFORE_PRESET: (work / "before.mp4").stat().st_size,
    }
    shutil.rmtree(work)
    return seconds, encoding, sizes


def run(work: Path, *, sizes: list[tuple[int, int, int]], repeats: int) -> tuple[list[Figure], dict[str, Any]]:
    """Each size `repeats` times; seconds and the share of the reference GPU generation."""
    figures = []
    details: dict[str, Any] = {
        "reference_gpu_seconds": REFERENCE_GPU_SECONDS,
        "sizes": sizes,
        "repeats": repeats,
        "x264_preset": DEFAULT_X264_PRESET,
        "bytes": {},
    }
    for width, height, count in sizes:
        seconds, encoding, file_sizes = time_commit(
            work / f"{width}x{height}", moving_frames(count, height, width), repeats=repeats
        )
        share = [100 * value / REFERENCE_GPU_SECONDS for value in seconds]
        label = f"{width}×{height}×{count}"
        larger = 100 * (file_sizes[DEFAULT_X264_PRESET] / file_sizes[BEFORE_PRESET] - 1)
        figures += [
            Figure("encoding", f"MP4 + check + thumbnail + preview + manifest, {label}", "s", seconds),
            Figure(
                "encoding",
                f"of which H.264 encoding alone (libx264 {DEFAULT_X264_PRESET}, crf {X264_CRF}), {label}",
                "s",
                encoding,
            ),
            Figure(
                "encoding",
                f"{label} as a share of a {REFERENCE_GPU_SECONDS:g} s GPU generation",
                "%",
                share,
                goal="< 1 %",
                met=statistics.median(share) < 1,
            ),
            Figure(
                "encoding",
                f"MP4 size at {DEFAULT_X264_PRESET}, {label}",
                "KiB",
                [file_sizes[DEFAULT_X264_PRESET] / 1024],
                note=f"{larger:+.0f} % against {BEFORE_PRESET}: {file_sizes[BEFORE_PRESET] / 1024:.0f} KiB",
            ),
        ]
        details["bytes"][label] = file_sizes
    return figures, details
