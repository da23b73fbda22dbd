"""Writers and checks against real ffmpeg and Pillow decoding."""

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from pipeline.encode import check_video, write_thumbnail, write_video


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
