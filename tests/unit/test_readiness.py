import os
import time

import pytest

from vidrop.config.settings import DEFAULT_IGNORE
from vidrop.daemon.intake.readiness import JunkFilter, SettleTracker, is_image_name

is_junk = JunkFilter(DEFAULT_IGNORE)


@pytest.mark.parametrize(
    "name",
    [
        ".photo.png.Xa3k9Q",
        ".DS_Store",
        "._photo.png",
        "photo.png.part",
        "a.tmp",
        "~$deck.png",
        "photo.png~",
        "Thumbs.db",
        "desktop.ini",
        ".vidrop-tmp-ab-x.mp4",
        "@eaDir",
        ".syncthing.a.png.tmp",
        "movie.crdownload",
    ],
)
def test_junk_names(name):
    assert is_junk(name)


@pytest.mark.parametrize("name", ["photo.png", "Photo.PNG", "hero shot.jpeg", "_defaults.json"])
def test_real_names(name):
    assert not is_junk(name)


def test_image_extensions_are_case_insensitive():
    assert is_image_name("A.PNG") and is_image_name("b.JpEg") and not is_image_name("c.json")


def test_a_growing_file_is_not_settled_until_it_stops(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(b"x" * 10)
    tracker = SettleTracker(settle_seconds=2.0)
    assert not tracker.is_settled(path, 100.0)
    with open(path, "ab") as handle:
        handle.write(b"more")
    assert not tracker.is_settled(path, 101.9)  # changed: the window starts again
    assert not tracker.is_settled(path, 103.8)
    assert tracker.is_settled(path, 104.0)


@pytest.mark.parametrize("offset", [3 * 3600, -3 * 3600, -30 * 86400])
def test_file_times_are_never_compared_with_the_local_clock(tmp_path, offset):
    """A camera or server clock hours ahead (or behind): the window is measured by our own observations."""
    path = tmp_path / "shot.png"
    path.write_bytes(b"x")
    stamp = time.time() + offset
    os.utime(path, (stamp, stamp))
    tracker = SettleTracker(settle_seconds=2.0)
    assert not tracker.is_settled(path, 50.0)  # however old or new its times say it is: first sight
    assert not tracker.is_settled(path, 51.0)
    assert tracker.is_settled(path, 52.0)


def test_links_and_missing_files_never_settle(tmp_path):
    target = tmp_path / "real.png"
    target.write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(target)
    tracker = SettleTracker(settle_seconds=0)
    assert not tracker.is_settled(tmp_path / "link.png", 1e12)
    assert not tracker.is_settled(tmp_path / "missing.png", 1e12)
