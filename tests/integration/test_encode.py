"""Writers and checks against real ffmpeg and Pillow decoding."""

from fractions import Fraction

import av
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from vidrop.config.errors import GenerationError
from vidrop.daemon.outbox import check_sound
from vidrop.pipeline.encode import check_video, start_video, write_thumbnail, write_video
from vidrop.pipeline.families.base import SoundTrack
from vidrop.pipeline.generate import GenerationResult


def frames(count=9, height=64, width=64):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(count, height, width, 3), dtype=np.uint8)


def test_mp4_is_h264_yuv420p_with_every_frame(tmp_path):
    path = tmp_path / "out.mp4"
    write_video(frames(), path, fps=8, fmt="mp4")
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert meta["size"] == (64, 64) and meta["codec"] == "h264" and "yuv420p" in meta["pix_fmt"]
    assert sum(1 for _ in reader) == 9
    # +faststart: the moov atom comes before the media data.
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")


def test_the_check_counts_what_a_full_decode_counts(tmp_path):
    path = tmp_path / "out.tmp"
    write_video(frames(count=17, height=48, width=80), path, fps=8, fmt="mp4")
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    check = check_video(path, fmt="mp4")
    assert (check.frames, check.width, check.height) == (sum(1 for _ in reader), *meta["size"]) == (17, 80, 48)


@pytest.mark.parametrize("keep", [0.99, 0.75, 0.5, 0.1, 0.01])
def test_a_video_cut_short_is_caught(tmp_path, keep):
    path = tmp_path / "out.tmp"
    write_video(frames(), path, fps=8, fmt="mp4")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(GenerationError, match="cannot be played"):
        check_video(path, fmt="mp4")


def test_a_video_missing_its_last_byte_is_caught(tmp_path):
    path = tmp_path / "out.tmp"
    write_video(frames(), path, fps=8, fmt="mp4")
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(GenerationError, match="cannot be played"):
        check_video(path, fmt="mp4")


def test_a_frame_with_a_broken_nal_unit_is_caught(tmp_path):
    path = tmp_path / "out.tmp"
    write_video(frames(), path, fps=8, fmt="mp4")
    data = bytearray(path.read_bytes())
    first_frame = data.index(b"mdat") + 4  # the first NAL unit's 4-byte length opens the media data
    data[first_frame : first_frame + 4] = (len(data)).to_bytes(4, "big")  # a length past the frame's end
    path.write_bytes(bytes(data))
    with pytest.raises(GenerationError, match="cannot be played") as caught:
        check_video(path, fmt="mp4")
    assert "frame 0 is broken" in caught.value.detail


@pytest.mark.parametrize("content", [b"not a video at all", b"\x00\x00\x00\x08free"])
def test_a_file_that_is_no_mp4_is_caught(tmp_path, content):
    path = tmp_path / "out.tmp"
    path.write_bytes(content)
    with pytest.raises(GenerationError, match="cannot be played"):
        check_video(path, fmt="mp4")


def test_an_empty_video_is_caught(tmp_path):
    path = tmp_path / "out.tmp"
    path.write_bytes(b"")
    with pytest.raises(GenerationError, match="empty"):
        check_video(path, fmt="mp4")


@pytest.mark.parametrize("preset", ["ultrafast", "medium"])
def test_the_preset_changes_speed_not_format(tmp_path, preset):
    path = tmp_path / "out.mp4"
    write_video(frames(), path, fps=8, fmt="mp4", x264_preset=preset)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert meta["codec"] == "h264" and "yuv420p" in meta["pix_fmt"] and sum(1 for _ in reader) == 9


def test_an_unknown_preset_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="x264_preset.*'quick'"):
        write_video(frames(), tmp_path / "out.mp4", fps=8, fmt="mp4", x264_preset="quick")


def test_odd_sizes_are_padded_to_even_instead_of_an_empty_file(tmp_path):
    path = tmp_path / "odd.tmp"  # temporary names carry no .mp4 suffix
    write_video(frames(height=63, width=65), path, fps=8, fmt="mp4")
    check = check_video(path, fmt="mp4")
    assert (check.frames, check.width, check.height) == (9, 66, 64)


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_animations_loop_with_every_frame(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    write_video(frames(count=5), path, fps=10, fmt=fmt)
    assert check_video(path, fmt=fmt).frames == 5
    with Image.open(path) as image:
        assert image.info.get("loop", 0) == 0


def test_thumbnail_is_the_middle_frame_at_most_320_px(tmp_path):
    path = tmp_path / "thumb.jpg"
    write_thumbnail(frames(count=3, height=360, width=640), path)
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.size == (320, 180)


def sound(samples=27000, channels=2, rate=24000):
    wave = np.sin(np.linspace(0, 440 * 2 * np.pi * samples / rate, samples, dtype=np.float32)) * 0.5
    return SoundTrack(np.tile(wave, (channels, 1)), rate)


def test_a_sound_track_is_muxed_as_aac_and_read_back_with_every_sample(tmp_path):
    path = tmp_path / "out.tmp"
    start_video(frames(), path, fps=8, fmt="mp4", sound=sound()).finish()  # 9 frames at 8 fps: 1.125 s
    check = check_video(path, fmt="mp4")
    assert check.frames == 9 and check.duration_seconds == 1.125
    assert check.audio.to_dict() == {
        "codec": "aac",
        "sample_rate": 24000,
        "channels": 2,
        "samples": 27000,
        "duration_seconds": 1.125,
    }
    with av.open(str(path)) as container:  # an independent reader agrees
        stream = container.streams.audio[0]
        assert stream.duration * stream.time_base == Fraction(27000, 24000) and stream.codec_context.channels == 2
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart, as without sound
    path.write_bytes(data[: int(len(data) * 0.9)])
    with pytest.raises(GenerationError, match="cannot be played"):
        check_video(path, fmt="mp4")


def test_the_outbox_check_refuses_a_sound_track_that_is_not_the_one_given(tmp_path):
    path = tmp_path / "out.tmp"
    start_video(frames(), path, fps=8, fmt="mp4", sound=sound(channels=1)).finish()
    written = check_video(path, fmt="mp4")
    assert written.audio.channels == 1
    check_sound(written, GenerationResult(frames(), sound=sound(channels=1)), 8, path)
    for given in (sound(samples=24000, channels=1), sound(), None):
        with pytest.raises(GenerationError, match="sound track came out wrong"):
            check_sound(written, GenerationResult(frames(), sound=given), 8, path)


def test_a_sound_video_that_cannot_be_written_is_a_generation_error(tmp_path):
    writing = start_video(frames(), tmp_path / "gone" / "out.tmp", fps=8, fmt="mp4", sound=sound())
    with pytest.raises(GenerationError, match="could not be encoded"):
        writing.finish()
    with pytest.raises(ValueError, match="cannot hold a sound track"):
        start_video(frames(), tmp_path / "out.gif", fps=8, fmt="gif", sound=sound())
