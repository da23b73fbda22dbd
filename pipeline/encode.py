"""Writing frames as MP4, GIF or WebP and a thumbnail, and checking what was written."""

from __future__ import annotations

import mmap
import struct
import subprocess
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import imageio_ffmpeg
import numpy as np
from PIL import Image

from vidrop.config.errors import TRY_AGAIN_FIX, GenerationError
from vidrop.config.vocabulary import DEFAULT_X264_PRESET, X264_PRESETS
from vidrop.pipeline.families.base import SoundTrack

THUMBNAIL_LONGEST_SIDE = 320
# The looping preview shown in galleries: small enough to load quickly from a network share.
PREVIEW_LONGEST_SIDE = 160
PREVIEW_MAX_FRAMES = 24
PREVIEW_QUALITY = 60
X264_CRF = 18


@dataclass(frozen=True)
class AudioCheck:
    """What a written MP4's sound track holds: AAC, its rate and channels, and the samples that play."""

    codec: str
    sample_rate: int
    channels: int
    samples: int

    @property
    def duration_seconds(self) -> float:
        return self.samples / self.sample_rate

    def to_dict(self) -> dict[str, Any]:
        """The manifest's `audio` block."""
        return {**vars(self), "duration_seconds": round(self.duration_seconds, 6)}


@dataclass(frozen=True)
class VideoCheck:
    """What a written video really holds, read back from the file."""

    frames: int
    width: int
    height: int
    duration_seconds: float | None = None  # the video track's, from an MP4's media header
    audio: AudioCheck | None = None  # an MP4's sound track, if it has one


def even_frames(frames: np.ndarray) -> np.ndarray:
    """Pad by one edge pixel where a side is odd: H.264 in yuv420p needs even sides."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def write_video(frames: np.ndarray, path: Path, *, fps: int, fmt: str, x264_preset: str = DEFAULT_X264_PRESET) -> None:
    """Write frames (uint8, F×H×W×3) to path in the given format."""
    start_video(frames, path, fps=fps, fmt=fmt, x264_preset=x264_preset).finish()


def start_video(
    frames: np.ndarray,
    path: Path,
    *,
    fps: int,
    fmt: str,
    x264_preset: str = DEFAULT_X264_PRESET,
    sound: SoundTrack | None = None,
) -> VideoWriting | SoundVideoWriting:
    """Begin writing frames to path; `finish()` waits for the file. An MP4 is encoded by ffmpeg meanwhile,
    so thumbnails and previews can be made while it runs; GIF and WebP are written before this returns.
    With a sound track (MP4 only) PyAV muxes H.264 and AAC, in a thread."""
    if sound is not None:
        if fmt != "mp4":
            raise ValueError(f"a {fmt} cannot hold a sound track")
        return SoundVideoWriting(frames, path, fps=fps, preset=x264_preset, sound=sound)
    if fmt == "mp4":
        return VideoWriting(frames, path, fps=fps, preset=x264_preset)
    if fmt in ("gif", "webp"):
        _write_animation(frames, path, fps=fps, fmt=fmt)
        return VideoWriting.done()
    raise ValueError(f"unknown video format {fmt!r}")


class VideoWriting:
    """One ffmpeg process encoding frames to H.264 in yuv420p with the index at the front (+faststart)."""

    def __init__(
        self, frames: np.ndarray | None, path: Path | None, *, fps: int = 0, preset: str = DEFAULT_X264_PRESET
    ) -> None:
        self._process: subprocess.Popen | None = None
        self._stderr = b""
        if frames is None or path is None:
            return
        if preset not in X264_PRESETS:
            raise ValueError(f"x264_preset must be one of {', '.join(X264_PRESETS)}, not {preset!r}")
        frames = np.ascontiguousarray(even_frames(frames))
        height, width = frames.shape[1:3]
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-y",
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{width}x{height}",
            "-r",
            str(fps),
            "-i",
            "-",
            "-an",
            "-c:v",
            "libx264",
            "-preset",
            preset,
            "-crf",
            str(X264_CRF),
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",  # the temporary name has no .mp4 suffix
            str(path),
        ]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        # A thread feeds the pipe (and drains stderr) so that the caller can work while ffmpeg encodes.
        self._feeder = threading.Thread(
            target=self._feed, args=(memoryview(frames).cast("B"),), name="vidrop-encode", daemon=True
        )
        self._feeder.start()

    @classmethod
    def done(cls) -> VideoWriting:
        """A writing that finished before it was returned (an animation)."""
        return cls(None, None)

    def _feed(self, data: memoryview) -> None:
        # Only the pipe is written here (one large write, no buffers of its own); stderr is read in finish().
        assert self._process is not None and self._process.stdin is not None
        try:
            self._process.stdin.write(data)
        except (OSError, ValueError):  # ffmpeg gone early: its exit status and stderr say why
            pass
        finally:
            try:
                self._process.stdin.close()
            except OSError:
                pass

    def finish(self) -> None:
        """Wait for ffmpeg; raise GenerationError if it did not exit cleanly."""
        if self._process is None:
            return
        assert self._process.stderr is not None
        self._stderr = self._process.stderr.read()  # a few lines at most: -loglevel error
        self._feeder.join()
        self._process.stderr.close()
        returncode = self._process.wait()
        if returncode != 0:
            message = self._stderr.decode("utf-8", "replace").strip()[-2000:]
            raise GenerationError(
                "The video could not be encoded.",
                detail=f"ffmpeg exited with {returncode}: {message}",
                fix=TRY_AGAIN_FIX,
            )

    def abandon(self) -> None:
        """Stop ffmpeg (something else in the commit failed) and wait for it; the caller removes the file."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
        self._feeder.join()
        if self._process.stderr is not None:
            self._process.stderr.close()
        self._process.wait()


class SoundVideoWriting:
    """H.264 (yuv420p, +faststart) and an AAC track in one MP4, written by PyAV in a thread, the way diffusers'
    `encode_video` (diffusers/utils/export_utils.py) writes LTX-2's output: the video frames, then the audio
    as one frame of 16-bit samples resampled to the encoder's planar float."""

    def __init__(self, frames: np.ndarray, path: Path, *, fps: int, preset: str, sound: SoundTrack) -> None:
        if preset not in X264_PRESETS:
            raise ValueError(f"x264_preset must be one of {', '.join(X264_PRESETS)}, not {preset!r}")
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(even_frames(frames), path, fps, preset, sound), name="vidrop-encode", daemon=True
        )
        self._thread.start()

    def _run(self, frames: np.ndarray, path: Path, fps: int, preset: str, sound: SoundTrack) -> None:
        try:
            write_sound_video(frames, path, fps=fps, preset=preset, sound=sound)
        except Exception as exc:  # PyAV raises its own FFmpegError types, OSError among them
            self._error = exc

    def finish(self) -> None:
        """Wait for the file; raise GenerationError if it could not be written."""
        self._thread.join()
        if self._error is not None:  # as for ffmpeg's exit status: the outbox tells a full or vanished disk apart
            raise GenerationError(
                "The video could not be encoded.",
                detail=f"PyAV: {type(self._error).__name__}: {self._error}",
                fix=TRY_AGAIN_FIX,
            ) from self._error

    def abandon(self) -> None:
        """Wait for the thread (it cannot be stopped midway; a tiny clip takes moments); the caller removes it."""
        self._thread.join()


def write_sound_video(frames: np.ndarray, path: Path, *, fps: int, preset: str, sound: SoundTrack) -> None:
    """Frames (uint8, F×H×W×3, even sides) and a sound track (float, channels × samples) into one MP4."""
    import av  # PyAV: only jobs with sound need it

    container = av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"})
    try:
        video = container.add_stream("libx264", rate=fps, options={"crf": str(X264_CRF), "preset": preset})
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        layout = "mono" if sound.channels == 1 else "stereo"
        audio = container.add_stream("aac", rate=sound.sample_rate, layout=layout)
        audio.time_base = Fraction(1, sound.sample_rate)
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        pcm = (np.clip(sound.samples, -1.0, 1.0) * 32767.0).astype(np.int16)
        packed = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm.T).reshape(1, -1), format="s16", layout=layout)
        packed.sample_rate = sound.sample_rate
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=sound.sample_rate)
        position = 0
        for chunk in [*resampler.resample(packed), *resampler.resample(None)]:
            chunk.pts, position = position, position + chunk.samples
            container.mux(audio.encode(chunk))
        container.mux(audio.encode())
    finally:
        container.close()


def _write_animation(frames: np.ndarray, path: Path, *, fps: int, fmt: str) -> None:
    images = [Image.fromarray(frame) for frame in frames]
    duration_ms = round(1000 / fps)
    options = {"lossless": False, "quality": 80} if fmt == "webp" else {"optimize": False}
    images[0].save(
        path, format=fmt.upper(), save_all=True, append_images=images[1:], duration=duration_ms, loop=0, **options
    )


def write_thumbnail(frames: np.ndarray, path: Path) -> None:
    """A representative frame (the middle one), longest side at most 320 px, as JPEG."""
    image = Image.fromarray(frames[len(frames) // 2])
    image.thumbnail((THUMBNAIL_LONGEST_SIDE, THUMBNAIL_LONGEST_SIDE), Image.Resampling.LANCZOS)
    image.save(path, format="JPEG", quality=88)


def write_preview(frames: np.ndarray, path: Path, *, fps: int) -> None:
    """A small looping animated WebP: longest side at most 160 px, at most 24 frames over the same duration."""
    step = max(1, -(-len(frames) // PREVIEW_MAX_FRAMES))
    images = []
    for frame in frames[::step]:
        image = Image.fromarray(frame)
        # Bilinear after a box reduction: at 160 px it looks as Lanczos does, in half the time.
        image.thumbnail((PREVIEW_LONGEST_SIDE, PREVIEW_LONGEST_SIDE), Image.Resampling.BILINEAR, reducing_gap=1.5)
        images.append(image)
    # method 2 of 0-6: about twice as fast as 4 for files a few per cent larger.
    images[0].save(
        path,
        format="WEBP",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 * step / fps),
        loop=0,
        lossless=False,
        quality=PREVIEW_QUALITY,
        method=2,
    )


def check_video(path: Path, *, fmt: str) -> VideoCheck:
    """Read the written file back; raise GenerationError if it is empty, cut short or unreadable.

    An MP4 is checked through its container, without decoding: every box must end inside the file, the
    video track's sample table must place every frame inside the media data, and each frame's H.264 NAL
    units must fill it exactly. A file cut short anywhere, or a broken index, fails; the frames are counted
    from the table. Animations are opened with Pillow.
    """
    if not path.exists() or path.stat().st_size == 0:
        raise GenerationError("The video file came out empty.", detail=f"{path} has 0 bytes", fix=TRY_AGAIN_FIX)
    try:
        if fmt == "mp4":
            with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _check_mp4(data)
        with Image.open(path) as image:
            return VideoCheck(frames=getattr(image, "n_frames", 1), width=image.width, height=image.height)
    except (OSError, ValueError, IndexError, struct.error) as exc:
        raise GenerationError(
            "The video file that was written cannot be played.", detail=f"{path}: {exc}", fix=TRY_AGAIN_FIX
        ) from None


def _boxes(data: mmap.mmap, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, end) of each box between start and end; ValueError where one runs past end."""
    position = start
    while position < end:
        if end - position < 8:
            raise ValueError(f"a box header at byte {position} is cut short")
        size, kind = struct.unpack_from(">I4s", data, position)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, position + 8)[0], 16
        elif size == 0:
            size = end - position
        if size < header or position + size > end:
            raise ValueError(
                f"the {kind.decode('latin-1')!r} box at byte {position} ({size} bytes) runs past "
                f"byte {end}: the file is cut short"
            )
        yield kind, position + header, position + size
        position += size


def _children(data: mmap.mmap, start: int, end: int) -> dict[bytes, list[tuple[int, int]]]:
    found: dict[bytes, list[tuple[int, int]]] = {}
    for kind, payload, box_end in _boxes(data, start, end):
        found.setdefault(kind, []).append((payload, box_end))
    return found


def _one(boxes: dict[bytes, list[tuple[int, int]]], kind: bytes) -> tuple[int, int]:
    if kind not in boxes:
        raise ValueError(f"no {kind.decode('latin-1')!r} box")
    return boxes[kind][0]


def _check_mp4(data: mmap.mmap) -> VideoCheck:
    top = _children(data, 0, len(data))
    _one(top, b"ftyp")
    media = top.get(b"mdat", [])
    if not media:
        raise ValueError("no 'mdat' box")
    moov = _one(top, b"moov")
    tracks: dict[bytes, tuple[dict, dict]] = {}
    for track in _children(data, *moov).get(b"trak", []):
        boxes = _children(data, *track)
        mdia = _children(data, *_one(boxes, b"mdia"))
        hdlr_start, _ = _one(mdia, b"hdlr")
        tracks.setdefault(bytes(data[hdlr_start + 8 : hdlr_start + 12]), (boxes, mdia))
    if b"vide" not in tracks:
        raise ValueError("no video track")
    boxes, mdia = tracks[b"vide"]
    checked = _check_samples(data, _sample_table(data, mdia), media)
    timescale, duration = _media_time(data, mdia)
    audio = _check_audio(data, *tracks[b"soun"], media) if b"soun" in tracks else None
    return VideoCheck(checked.frames, checked.width, checked.height, duration / timescale, audio)


def _sample_table(data: mmap.mmap, mdia: dict[bytes, list[tuple[int, int]]]) -> dict[bytes, list[tuple[int, int]]]:
    return _children(data, *_one(_children(data, *_one(mdia, b"minf")), b"stbl"))


def _media_time(data: mmap.mmap, mdia: dict[bytes, list[tuple[int, int]]]) -> tuple[int, int]:
    """A track's timescale and duration, from its media header (version 0: 32-bit times; 1: 64-bit)."""
    start, _ = _one(mdia, b"mdhd")
    if data[start] == 1:
        return struct.unpack_from(">IQ", data, start + 20)
    return struct.unpack_from(">II", data, start + 12)


def _check_audio(data: mmap.mmap, boxes: dict, mdia: dict, media: list[tuple[int, int]]) -> AudioCheck:
    """The sound track: AAC (an mp4a entry), every packet inside the media data, and the samples that play:
    the media duration less the encoder's priming, which the edit list skips."""
    stbl = _sample_table(data, mdia)
    stsd_start, stsd_end = _one(stbl, b"stsd")
    entry = _children(data, stsd_start + 8, stsd_end)
    if b"mp4a" not in entry:
        raise ValueError(f"the sound track is not AAC: {[kind.decode('latin-1') for kind in entry]}")
    channels = struct.unpack_from(">H", data, entry[b"mp4a"][0][0] + 16)[0]
    packets = _walk_samples(data, stbl, media, "audio packet")
    if packets == 0:
        raise ValueError("the sound track has no packets")
    timescale, duration = _media_time(data, mdia)
    skipped = 0
    if b"edts" in boxes:
        elst_start, _ = _one(_children(data, *_one(boxes, b"edts")), b"elst")
        wide = data[elst_start] == 1
        if struct.unpack_from(">I", data, elst_start + 4)[0]:
            skipped = struct.unpack_from(">q" if wide else ">i", data, elst_start + (16 if wide else 12))[0]
    return AudioCheck(codec="aac", sample_rate=timescale, channels=channels, samples=duration - max(skipped, 0))


def _walk_samples(data: mmap.mmap, stbl: dict, media: list[tuple[int, int]], what: str, on_sample=None) -> int:
    """Walk a track's samples through its chunk tables; each must lie inside the media data. The count."""
    stsz_start, _ = _one(stbl, b"stsz")
    fixed_size, count = struct.unpack_from(">II", data, stsz_start + 4)
    sizes = [fixed_size] * count if fixed_size else list(struct.unpack_from(f">{count}I", data, stsz_start + 12))
    if b"co64" in stbl:
        co64_start, _ = stbl[b"co64"][0]
        chunks = struct.unpack_from(f">{struct.unpack_from('>I', data, co64_start + 4)[0]}Q", data, co64_start + 8)
    else:
        stco_start, _ = _one(stbl, b"stco")
        chunks = struct.unpack_from(f">{struct.unpack_from('>I', data, stco_start + 4)[0]}I", data, stco_start + 8)
    stsc_start, _ = _one(stbl, b"stsc")
    runs = struct.unpack_from(f">{3 * struct.unpack_from('>I', data, stsc_start + 4)[0]}I", data, stsc_start + 8)
    per_chunk = [runs[index : index + 2] for index in range(0, len(runs), 3)]  # (first chunk, samples per chunk)
    stts_start, _ = _one(stbl, b"stts")
    timed = struct.unpack_from(f">{2 * struct.unpack_from('>I', data, stts_start + 4)[0]}I", data, stts_start + 8)
    if count == 0 or sum(timed[0::2]) != count:
        raise ValueError(f"the sample table lists {count} {what}s and times {sum(timed[0::2])}")
    sample = 0
    for chunk, offset in enumerate(chunks, 1):
        here = next((samples for first, samples in reversed(per_chunk) if first <= chunk), None)
        if here is None:
            raise ValueError(f"the sample-to-chunk table does not cover chunk {chunk}")
        for _ in range(here):
            if sample == count:
                break
            end = offset + sizes[sample]
            if not any(start <= offset and end <= stop for start, stop in media):
                raise ValueError(f"{what} {sample} (bytes {offset}-{end}) lies outside the media data")
            if on_sample is not None:
                on_sample(sample, offset, end)
            sample, offset = sample + 1, end
    if sample != count:
        raise ValueError(f"the chunks hold {sample} of the {count} {what}s the sample table lists")
    return count


def _check_samples(
    data: mmap.mmap, stbl: dict[bytes, list[tuple[int, int]]], media: list[tuple[int, int]]
) -> VideoCheck:
    # 1. The sample entry: H.264 with its coded size and the length of a NAL unit's size field.
    stsd_start, stsd_end = _one(stbl, b"stsd")
    entry = _children(data, stsd_start + 8, stsd_end)
    if b"avc1" not in entry:
        raise ValueError(f"the video track is not H.264: {[kind.decode('latin-1') for kind in entry]}")
    avc1_start, avc1_end = entry[b"avc1"][0]
    width, height = struct.unpack_from(">HH", data, avc1_start + 24)
    avcc_start, _ = _one(_children(data, avc1_start + 78, avc1_end), b"avcC")
    length_size = (data[avcc_start + 4] & 3) + 1

    # 2. Every frame inside the media data (the chunk tables), made of whole NAL units.
    def whole_nal_units(frame: int, position: int, end: int) -> None:
        while position < end:
            nal = int.from_bytes(data[position : position + length_size], "big")
            if nal == 0 or position + length_size + nal > end:
                raise ValueError(f"frame {frame} is broken: a NAL unit at byte {position} of {nal} bytes")
            position += length_size + nal

    count = _walk_samples(data, stbl, media, "frame", whole_nal_units)
    return VideoCheck(frames=count, width=width, height=height)


def check_thumbnail(path: Path) -> tuple[int, int]:
    """Decode the thumbnail; return its size."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except OSError as exc:
        raise GenerationError(
            "The thumbnail could not be written.", detail=f"{path}: {exc}", fix="Try again."
        ) from None
