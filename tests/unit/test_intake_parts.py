import errno
import json
import os
import queue
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from vidrop.config.errors import SidecarError
from vidrop.config.settings import DEFAULT_IGNORE, IntakeSettings
from vidrop.daemon.intake.intake import Intake
from vidrop.daemon.intake.mounts import filesystem_type, is_network_filesystem
from vidrop.daemon.intake.pairing import expand_placeholders, folder_defaults, output_stem
from vidrop.daemon.intake.readiness import FINDER_BUSY, JunkFilter, SettleTracker
from vidrop.daemon.intake.scan import InboxScanner, InboxUnavailable
from vidrop.daemon.intake.taken import TakenInputs
from vidrop.daemon.intake.watch import WatchLimitReached

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /mnt/share rw,relatime shared:20 - cifs //nas/share rw,vers=3.0
41 40 0:36 / /mnt/share/local\\040disk rw - ext4 /dev/sdb1 rw
42 22 0:37 / /srv/nfs rw - nfs4 server:/export rw
43 22 0:38 / /media/cloud rw - fuse.rclone remote: rw
"""


@pytest.mark.parametrize(
    "path,expected",
    [
        ("/home/me/inbox", "ext4"),
        ("/mnt/share/inbox", "cifs"),
        ("/mnt/share/local disk/in", "ext4"),
        ("/srv/nfs", "nfs4"),
        ("/media/cloud/x", "fuse.rclone"),
    ],
)
def test_filesystem_type_from_mountinfo(tmp_path, path, expected):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    assert filesystem_type(Path(path), mountinfo) == expected


def test_network_filesystems():
    assert all(is_network_filesystem(t) for t in ("nfs", "nfs4", "cifs", "smb3", "fuse.sshfs", "9p"))
    assert not any(is_network_filesystem(t) for t in ("ext4", "xfs", "btrfs", "tmpfs", "overlay"))


def test_incremental_scan_lists_only_folders_that_changed(tmp_path):
    is_junk = JunkFilter(DEFAULT_IGNORE)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "one.png").write_bytes(b"x")
    (tmp_path / "b" / "two.png").write_bytes(b"x")
    (tmp_path / "b" / ".hidden.png").write_bytes(b"x")
    scanner = InboxScanner(tmp_path, is_junk)

    def names(*, full):
        listings = []
        scanner.scan(full=full, visit=listings.append)
        return sorted(name for listing in listings for name in listing.images)

    assert names(full=False) == ["one.png", "two.png"]
    assert names(full=False) == []  # nothing changed: no folder is listed again
    (tmp_path / "b" / "three.png").write_bytes(b"x")
    os.utime(tmp_path / "b", ns=(1, os.stat(tmp_path / "b").st_mtime_ns + 1))
    assert names(full=False) == ["three.png", "two.png"]
    assert len(names(full=True)) == 3


def test_scan_of_a_missing_inbox_says_unavailable(tmp_path):
    with pytest.raises(InboxUnavailable):
        InboxScanner(tmp_path / "gone", JunkFilter(())).scan(full=True, visit=print)


def test_nearest_defaults_win_key_by_key_and_placeholders(tmp_path):
    (tmp_path / "acme" / "spring").mkdir(parents=True)
    (tmp_path / "_defaults.json").write_text(json.dumps({"prompt": "{stem} in {folder}", "fps": 8, "steps": 4}))
    (tmp_path / "acme" / "_defaults.json").write_text(json.dumps({"steps": 9, "priority": 2}))
    merged = folder_defaults(tmp_path / "acme" / "spring", tmp_path, max_bytes=4096)
    assert merged == {"prompt": "{stem} in {folder}", "fps": 8, "steps": 9, "priority": 2}
    assert expand_placeholders(merged, stem="shoe", folder="spring")["prompt"] == "shoe in spring"
    assert expand_placeholders({"prompt": "{0.__class__}"}, stem="s", folder="f")["prompt"] == "{0.__class__}"


def test_a_broken_defaults_file_names_itself(tmp_path):
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "_defaults.json").write_text('{"stepz": 3}')
    with pytest.raises(SidecarError, match="acme/_defaults.json"):
        folder_defaults(tmp_path / "acme", tmp_path, max_bytes=4096)


def test_output_stems_stay_distinct_for_one_stem(tmp_path):
    is_junk = JunkFilter(DEFAULT_IGNORE)
    (tmp_path / "solo.png").write_bytes(b"x")
    (tmp_path / "pair.png").write_bytes(b"x")
    (tmp_path / "pair.JPG").write_bytes(b"x")
    (tmp_path / "._pair.tif").write_bytes(b"x")
    assert output_stem(tmp_path / "solo.png", is_junk) == "solo"
    assert output_stem(tmp_path / "pair.png", is_junk) == "pair_png"
    assert output_stem(tmp_path / "pair.JPG", is_junk) == "pair_jpg"


def test_custom_ignore_list_and_own_temporaries():
    is_junk = JunkFilter(["*.draft.png"])
    assert is_junk("hero.DRAFT.png") and is_junk(".vidrop-tmp-1234-x.mp4") and not is_junk(".DS_Store")


def test_finder_copy_in_progress_is_not_settled(tmp_path):
    path = tmp_path / "copying.png"
    path.write_bytes(b"x")
    try:
        os.setxattr(path, "user.com.apple.FinderInfo", FINDER_BUSY + bytes(24))
    except OSError:
        pytest.skip("this filesystem has no user extended attributes")
    tracker = SettleTracker(settle_seconds=0)
    assert not tracker.is_settled(path, 10.0)
    os.removexattr(path, "user.com.apple.FinderInfo")
    assert tracker.is_settled(path, 10.0)


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now

    def monotonic(self):
        return self.now


class _ExhaustedWatcher:
    def __init__(self, inbox, events):
        pass

    def start(self):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    def stop(self):
        pass


class _DyingWatcher:
    started = 0

    def __init__(self, inbox, events):
        pass

    def start(self):
        type(self).started += 1

    def is_alive(self):
        return False

    def stop(self):
        pass


def test_inotify_exhaustion_falls_back_to_polling(tmp_path):
    intake = Intake(tmp_path, IntakeSettings(), queue.Queue(), _Clock(), watcher_factory=_ExhaustedWatcher)
    with capture_logs() as logs:
        intake.start(watch=True)
    assert intake.mode == "polling" and intake.polling_reason == "inotify limit reached (fs.inotify.max_user_watches)"
    [exhausted] = [e for e in logs if e["event"] == "inotify_exhausted"]
    assert exhausted["sysctl"] == "fs.inotify.max_user_watches" and exhausted["mode"] == "polling"
    assert [e["mode"] for e in logs if e["event"] == "intake_started"] == ["polling"]


class _LivingWatcher:
    def __init__(self, inbox, events):
        pass

    def start(self):
        pass

    def is_alive(self):
        return True

    def stop(self):
        pass


def test_a_folder_beyond_the_watch_limit_turns_the_whole_inbox_to_polling(tmp_path):
    intake = Intake(tmp_path, IntakeSettings(watch="events"), queue.Queue(), _Clock(), watcher_factory=_LivingWatcher)
    intake.start(watch=True)
    (tmp_path / "deep").mkdir()
    with capture_logs() as logs:
        intake.notice(WatchLimitReached(OSError(errno.ENOSPC, "inotify watch limit reached"), tmp_path / "deep"))
        intake.notice(WatchLimitReached(OSError(errno.ENOSPC, "inotify watch limit reached"), tmp_path / "deep"))
    assert intake.mode == "polling" and intake._watcher is None
    [exhausted] = [e for e in logs if e["event"] == "inotify_exhausted"]
    assert exhausted["folder"] == str(tmp_path / "deep") and "sysctl -w fs.inotify.max_user_watches" in exhausted["fix"]


def test_a_dead_observer_is_restarted_with_a_full_scan(tmp_path):
    intake = Intake(tmp_path, IntakeSettings(watch="events"), queue.Queue(), _Clock(), watcher_factory=_DyingWatcher)
    intake.start(watch=True)
    (tmp_path / "missed.png").write_bytes(b"x")  # written while the observer was dead: no event
    with capture_logs() as logs:
        intake.tick()
    assert _DyingWatcher.started == 2 and any(e["event"] == "observer_died" for e in logs)
    assert len(intake.pending) == 1


class _Store:
    """The ledger's side of remembered inputs, in memory."""

    def __init__(self, rows=()):
        self.rows = {row.path: row for row in rows}
        self.forgotten = []

    def remember_inputs(self, inputs):
        self.rows.update((row.path, row) for row in inputs)

    def taken_inputs(self):
        return [(row.path, row.input_stat, row.sidecar_stat) for row in self.rows.values()]

    def forget_inputs(self, paths):
        self.forgotten += paths


def _take_all(intake):
    ready = intake.take_ready()  # each file is seen a first time, then again long after it settled
    intake.clock.now += 3600
    ready += intake.take_ready()
    for item in ready:
        intake.pending.taken.remember(
            item.image or item.sidecar,
            item.image_snapshot or item.sidecar_snapshot,
            item.sidecar_snapshot if item.image else None,
            "key",
            0.0,
        )
    intake.pending.taken.save()
    return sorted(str((item.image or item.sidecar).relative_to(intake.inbox)) for item in ready)


def test_a_reconcile_passes_over_taken_files_until_they_change_and_forgets_gone_ones(tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "a").mkdir(parents=True)
    (inbox / "b").mkdir()
    for name in ("a/one.png", "a/one.json", "a/two.png", "b/text.json", "b/three.png"):
        (inbox / name).write_bytes(b"x")
    store, clock = _Store(), _Clock()
    intake = Intake(
        inbox, IntakeSettings(watch="polling", pairing_seconds=0), queue.Queue(), clock, taken=TakenInputs(inbox, store)
    )
    intake.start(watch=False)
    assert _take_all(intake) == ["a/one.png", "a/two.png", "b/text.json", "b/three.png"]
    assert sorted(store.rows) == ["a/one.png", "a/two.png", "b/text.json", "b/three.png"]

    clock.now += 60
    intake.tick()  # the next full reconcile: nothing to look at
    assert intake.pending.passed_over == 4 and len(intake.pending) == 0

    # After a restart (a new intake from what the ledger kept): the same, with no reading of the files.
    intake = Intake(
        inbox, IntakeSettings(watch="polling", pairing_seconds=0), queue.Queue(), clock, taken=TakenInputs(inbox, store)
    )
    intake.pending.taken.load()
    intake.start(watch=False)
    assert intake.pending.passed_over == 4 and len(intake.pending) == 0

    (inbox / "a" / "one.json").write_bytes(b"yy")  # the sidecar changed in place: its image is looked at again
    (inbox / "b" / "text.json").unlink()
    (inbox / "b" / "three.png").unlink()
    os.rmdir(inbox / "b")
    clock.now += 60
    intake.tick()
    assert _take_all(intake) == ["a/one.png"]
    assert sorted(store.forgotten) == ["b/text.json", "b/three.png"]
    assert len(intake.pending.taken) == 2


class _CpuClock:
    """CPU seconds that advance by `per_call` each time they are read (a scan reads it before and after)."""

    def __init__(self, per_call):
        self.per_call, self.now = per_call, 0.0

    def __call__(self):
        self.now += self.per_call
        return self.now


def test_a_costly_reconcile_runs_less_often_so_a_large_idle_inbox_stays_idle(tmp_path):
    settings = IntakeSettings(watch="events", reconcile_seconds=30, reconcile_cpu_share=0.005)
    cheap, costly = (
        Intake(tmp_path, settings, queue.Queue(), _Clock(), cpu_time=_CpuClock(0.01)),
        Intake(tmp_path, settings, queue.Queue(), _Clock(), cpu_time=_CpuClock(1.0)),
    )
    for intake in (cheap, costly):
        intake.start(watch=False)  # no observer: only the reconcile finds files
    (tmp_path / "missed.png").write_bytes(b"x")
    for intake in (cheap, costly):
        intake.clock.now += 40  # past 30 s (+10 % jitter)
        intake.tick()
    assert len(cheap.pending) == 1  # a 0.01 s scan: every 30 s, as set
    assert len(costly.pending) == 0  # a 1 s scan at 0.5 % of a core: every 200 s
    costly.clock.now += 200  # 240 s after the first scan: past 200 s + 10 %
    costly.tick()
    assert len(costly.pending) == 1
