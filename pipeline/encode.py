"""Writing frames as MP4, GIF or WebP and a thumbnail, and checking what was written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

from pipeline.errors import GenerationError

THUMBNAIL_LONGEST_SIDE = 320
# The looping preview shown in galleries: small enough to load quickly from a network share.
PREVIEW_LONGEST_SIDE = 160
PREVIEW_MAX_FRAMES = 24
PREVIEW_QUALITY = 60


@dataclass(frozen=True)
class VideoCheck:
    """What a written video really holds, read back from the file."""

    frames: int
    width: int
    height: int


def even_frames(frames: np.ndarray) -> np.ndarray:
    """Pad by one edge pixel where a side is odd: H.264 in yuv420p needs even sides."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def write_video(frames: np.ndarray, path: Path, *, fps: int, fmt: str) -> None:
    """Write frames (uint8, F×H×W×3) to path in the given format."""
    if fmt == "mp4":
        _write_mp4(frames, path, fps=fps)
    elif fmt in ("gif", "webp"):
        _write_animation(frames, path, fps=fps, fmt=fmt)
    else:
        raise ValueError(f"unknown video format {fmt!r}")


def _write_mp4(frames: np.ndarray, path: Path, *, fps: int) -> None:
    frames = even_frames(frames)
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        output_params=["-crf", "18", "-movflags", "+faststart", "-f", "mp4"],  # -f: the temporary name has no .mp4 suffix
        ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def _write_animation(frames: np.ndarray, path: Path, *, fps: int, fmt: str) -> None:
    images = [Image.fromarray(frame) for frame in frames]
    duration_ms = round(1000 / fps)
    options = {"lossless": False, "quality": 80} if fmt == "webp" else {"optimize": False}
    images[0].save(path, format=fmt.upper(), save_all=True, append_images=images[1:], duration=duration_ms,
                   loop=0, **options)


def write_thumbnail(frames: np.ndarray, path: Path) -> None:
    """A representative frame (the middle one), longest side at most 320 px, as JPEG."""
    image = Image.fromarray(frames[len(frames) // 2])
    image.thumbnail((THUMBNAIL_LONGEST_SIDE, THUMBNAIL_LONGEST_SIDE), Image.Resampling.LANCZOS)
    image.save(path, format="JPEG", quality=88)


def write_preview(frames: np.ndarray, path: Path, *, fps: int) -> None:
    """A small looping animated WebP: longest side at most 160 px, at most 24 frames over the same duration."""
    step = max(1, -(-len(frames) // PREVIEW_MAX_FRAMES))
    chosen = frames[::step]
    images = []
    for frame in chosen:
        image = Image.fromarray(frame)
        image.thumbnail((PREVIEW_LONGEST_SIDE, PREVIEW_LONGEST_SIDE), Image.Resampling.LANCZOS)
        images.append(image)
    images[0].save(path, format="WEBP", save_all=True, append_images=images[1:], duration=round(1000 * step / fps),
                   loop=0, lossless=False, quality=PREVIEW_QUALITY, method=4)


def check_video(path: Path, *, fmt: str) -> VideoCheck:
    """Decode the written file completely; raise GenerationError if it is empty or unreadable."""
    if not path.exists() or path.stat().st_size == 0:
        raise GenerationError("The video file came out empty.", detail=f"{path} has 0 bytes",
                              fix="Try again; if it keeps happening, send the error file to the operator.")
    try:
        if fmt == "mp4":
            reader = imageio_ffmpeg.read_frames(str(path))
            meta = reader.__next__()
            count = sum(1 for _ in reader)
            width, height = meta["size"]
            return VideoCheck(frames=count, width=width, height=height)
        with Image.open(path) as image:
            return VideoCheck(frames=getattr(image, "n_frames", 1), width=image.width, height=image.height)
    except (OSError, RuntimeError, StopIteration, KeyError) as exc:
        raise GenerationError("The video file that was written cannot be played.", detail=f"{path}: {exc}",
                              fix="Try again; if it keeps happening, send the error file to the operator.") from None


def check_thumbnail(path: Path) -> tuple[int, int]:
    """Decode the thumbnail; return its size."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except OSError as exc:
        raise GenerationError("The thumbnail could not be written.", detail=f"{path}: {exc}",
                              fix="Try again.") from None
