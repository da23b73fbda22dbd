"""The pieces that decide whether a file is complete, what it is, and which sidecar is its own."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from structlog.testing import capture_logs

from vidrop.config.errors import InputError
from vidrop.daemon.intake.pairing import sidecars_for
from vidrop.daemon.intake.pending import PendingInputs
from vidrop.daemon.intake.readiness import JunkFilter, OpenWriters, find_unfinished_file
from vidrop.pipeline.images import check_readable_name, find_unfinished, open_image, sniff_format


def noisy(fmt: str, size=(128, 96), **options) -> bytes:
    pixels = (np.random.default_rng(1).random((size[1], size[0], 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "AVIF", "HEIF"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_complete_file_shows_nothing_unfinished(fmt):
    assert find_unfinished(noisy(fmt)) is None


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("written", [0.4, 0.9])
def test_a_preallocated_file_still_being_filled_is_certainly_unfinished(fmt, written):
    data = noisy(fmt)
    cut = int(len(data) * written)
    found = find_unfinished(data[:cut] + bytes(len(data) - cut))
    assert found is not None and found.is_certain, found


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "AVIF", "HEIF"])
def test_a_hole_in_the_middle_is_suspect(fmt):
    data = noisy(fmt, size=(256, 192))
    middle = len(data) // 2
    found = find_unfinished(data[:middle] + bytes(8192) + data[middle + 8192 :])
    assert found is not None and "zero bytes" in found.reason


def test_a_jpeg_thumbnail_end_marker_does_not_pass_for_the_end_of_the_image():
    thumbnail = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(thumbnail, "JPEG")
    exif = Image.Exif()
    exif[0x010E] = "with a thumbnail"
    # An APP1 segment whose payload ends in a complete JPEG (its own FF D9), as cameras write thumbnails.
    app1 = b"Exif\x00\x00" + exif.tobytes()[6:] + thumbnail.getvalue()
    data = noisy("JPEG")
    data = data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:]
    assert find_unfinished(data) is None
    cut = len(data) // 2
    assert find_unfinished(data[:cut] + bytes(len(data) - cut)).is_certain


def test_zeros_after_a_complete_jpeg_are_only_suspect():
    found = find_unfinished(noisy("JPEG") + bytes(512))
    assert found is not None and not found.is_certain


def test_a_sidecar_that_is_not_complete_json_is_unfinished(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"prompt": "slow pu')
    assert find_unfinished_file(path, max_bytes=1 << 20) is not None
    path.write_text('{"prompt": "slow push-in"}')
    assert find_unfinished_file(path, max_bytes=1 << 20) is None


def test_a_file_open_for_writing_by_another_process_is_seen(tmp_path):
    path = tmp_path / "open.png"
    path.write_bytes(b"x")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"f = open({str(path)!r}, 'r+b'); print('open', flush=True); import sys; sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        writers = OpenWriters()
        assert f"(pid {holder.pid})" in writers.writer_of(path)
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()
    writers.refresh()
    assert writers.writer_of(path) is None


def test_a_file_open_only_for_reading_is_not_being_written(tmp_path):
    path = tmp_path / "read.png"
    path.write_bytes(b"x")
    with open(path, "rb"):
        reader = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"f = open({str(path)!r}, 'rb'); print('open', flush=True); import sys; sys.stdin.readline()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert reader.stdout.readline().strip() == "open"
            assert OpenWriters().writer_of(path) is None
        finally:
            reader.stdin.close()
            reader.wait(timeout=10)
            reader.stdout.close()


class _NoWriters:
    def refresh(self):
        pass

    def writer_of(self, path):
        return None


def _pending(inbox, **kwargs):
    return PendingInputs(
        inbox,
        is_junk=JunkFilter([]),
        settle_seconds=1.0,
        pairing_seconds=2.0,
        grace_seconds=10.0,
        writers=_NoWriters(),
        **kwargs,
    )


def test_a_preallocated_image_waits_for_the_grace_then_is_handed_out_with_what_was_found(tmp_path):
    data = noisy("JPEG")
    image = tmp_path / "shot.jpg"
    image.write_bytes(data[: len(data) // 3] + bytes(len(data) - len(data) // 3))
    (tmp_path / "shot.json").write_text(json.dumps({"prompt": "x"}))
    pending = _pending(tmp_path)
    pending.notice(image)
    with capture_logs() as logs:
        assert pending.take_ready(100.0) == []
        assert pending.take_ready(101.5) == []  # settled, but its end is missing
        assert pending.take_ready(109.0) == []
    assert [e["reason"] for e in logs if e["event"] == "input_still_arriving"] == [
        "the end of the JPEG (its EOI marker) is missing"
    ]  # said once
    [ready] = pending.take_ready(110.5)
    assert ready.unfinished.is_certain and ready.stable_seconds >= 10


def test_a_completed_image_is_taken_as_soon_as_it_settles(tmp_path):
    data = noisy("JPEG")
    image = tmp_path / "shot.jpg"
    image.write_bytes(data[:100] + bytes(len(data) - 100))
    (tmp_path / "shot.json").write_text(json.dumps({"prompt": "x"}))
    pending = _pending(tmp_path)
    pending.notice(image)
    assert pending.take_ready(100.0) == [] and pending.take_ready(101.5) == []
    with open(image, "r+b") as handle:
        handle.write(data)
    assert pending.take_ready(102.0) == []  # changed: settles again
    [ready] = pending.take_ready(103.1)
    assert ready.unfinished is None and ready.sidecar.name == "shot.json"


def test_a_sidecar_that_does_not_parse_yet_waits_like_an_image(tmp_path):
    make = Image.new("RGB", (8, 8))
    make.save(tmp_path / "a.png")
    (tmp_path / "a.json").write_text('{"prompt": "hal')
    pending = _pending(tmp_path)
    pending.notice(tmp_path / "a.png")
    assert pending.take_ready(100.0) == [] and pending.take_ready(101.5) == []
    (tmp_path / "a.json").write_text('{"prompt": "half and whole"}')
    assert pending.take_ready(102.0) == []
    [ready] = pending.take_ready(103.1)
    assert ready.sidecar.name == "a.json"


def test_a_handed_back_input_keeps_the_time_it_was_seen_unchanged(tmp_path):
    """An image that does not decode yet is handed back; its grace is not started again."""
    (tmp_path / "a.png").write_bytes(b"not yet an image")
    (tmp_path / "a.json").write_text('{"prompt": "x"}')
    pending = _pending(tmp_path)
    pending.notice(tmp_path / "a.png")
    pending.take_ready(100.0)
    [first] = pending.take_ready(101.5)
    pending.release(tmp_path / "a.png", not_before=105.0)
    [again] = pending.take_ready(106.0)
    assert again.stable_seconds == pytest.approx(6.0)


@pytest.mark.parametrize(
    "image,sidecar",
    [("SHOT.PNG", "SHOT.JSON"), ("Banner.png", "Banner.Json"), ("logo.PNG", "logo.json"), ("x.jpg", "x.JsOn")],
)
def test_sidecars_pair_whatever_the_case_of_either_extension(tmp_path, image, sidecar):
    (tmp_path / image).write_bytes(b"x")
    (tmp_path / sidecar).write_text("{}")
    assert sidecars_for(tmp_path / image) == [tmp_path / sidecar]


def test_two_sidecars_differing_in_case_are_a_conflict(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    for name in ("a.json", "a.JSON"):
        (tmp_path / name).write_text('{"prompt": "x"}')
    pending = _pending(tmp_path)
    pending.notice(tmp_path / "a.png")
    pending.take_ready(100.0)
    [ready] = pending.take_ready(101.5)
    assert sorted(p.name for p in ready.sidecar_conflict) == ["a.JSON", "a.json"]


def test_file_times_in_the_future_do_not_hold_the_pairing_window(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    ahead = os.stat(tmp_path / "a.png").st_mtime + 3 * 3600
    os.utime(tmp_path / "a.png", (ahead, ahead))
    pending = _pending(tmp_path)
    pending.notice(tmp_path / "a.png")
    assert pending.take_ready(100.0) == [] and pending.take_ready(101.0) == []
    [ready] = pending.take_ready(102.1)  # two seconds of our own observation, whatever its mtime says
    assert ready.sidecar is None


@pytest.mark.parametrize(
    "head,name",
    [
        (b"8BPS\x00\x01", "Photoshop (PSD)"),
        (b"\xff\xd8\xff\xe0", "JPEG"),
        (b"\x00\x00\x00\x1cftypheic", "HEIC"),
        (b"\x00\x00\x00\x1cftypavif", "AVIF"),
        (b"II*\x00\x10\x00\x00\x00CR\x02", "camera RAW (CR2)"),
        (b'<?xml version="1.0"?><svg ', "SVG (vector)"),
        (b"hello", None),
    ],
)
def test_formats_are_named_by_their_first_bytes(head, name):
    assert sniff_format(head) == name


@pytest.mark.parametrize(
    "filename,data,named",
    [
        ("layers.psd", b"8BPS\x00\x01" + bytes(40), "Photoshop (PSD)"),
        ("raw.NEF", b"MM\x00*" + bytes(40), "RAW"),
        ("logo.svg", b"<svg/>", "SVG"),
        ("scan", b"\xff\xd8\xff\xe0" + bytes(40), "JPEG"),
        ("renamed.png", b"8BPS\x00\x01" + bytes(40), "Photoshop (PSD)"),
    ],
)
def test_other_image_files_are_refused_naming_their_format_and_the_export(tmp_path, filename, data, named):
    path = tmp_path / filename
    path.write_bytes(data)
    with pytest.raises(InputError) as raised:
        check_readable_name(path)
    assert named in raised.value.reason + raised.value.detail and "PNG or JPEG" in raised.value.fix


@pytest.mark.parametrize("fmt,suffix", [("GIF", "gif"), ("WEBP", "webp"), ("PNG", "png")])
def test_an_animated_image_is_used_by_its_first_frame(tmp_path, fmt, suffix):
    frames = [Image.new("RGB", (32, 16), (index * 100, 0, 0)) for index in range(3)]
    path = tmp_path / f"loop.{suffix}"
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    image, facts = open_image(path, max_pixels=10**6)
    assert facts.frames == 3 and facts.is_animated and image.size == (32, 16)
    assert image.getpixel((0, 0))[0] < 10  # the first frame


@pytest.mark.parametrize("fmt,suffix", [("HEIF", "heic"), ("AVIF", "avif")])
def test_phone_formats_decode(tmp_path, fmt, suffix):
    path = tmp_path / f"phone.{suffix}"
    Image.new("RGB", (32, 16), (200, 100, 0)).save(path, fmt)
    image, facts = open_image(path, max_pixels=10**6)
    assert image.size == (32, 16) and not facts.is_animated
