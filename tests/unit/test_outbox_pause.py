"""The outbox pause: which failures mean "wait", and the doubling back-off."""

import errno

import pytest

from tests.fakes import FakeClock
from vidrop.daemon.outbox import Outbox, OutboxUnavailable
from vidrop.daemon.outbox_pause import OutboxPause


def test_a_missing_outbox_is_unavailable_and_never_created(tmp_path):
    outbox = Outbox(tmp_path / "share" / "outbox")
    with pytest.raises(OutboxUnavailable) as caught:
        outbox.check_available()
    assert caught.value.code == errno.ENOENT and caught.value.errno_name == "ENOENT"
    assert not (tmp_path / "share").exists()


def test_the_wait_doubles_up_to_the_limit_and_the_pause_ends_when_the_outbox_is_back(tmp_path):
    clock = FakeClock()
    outbox = Outbox(tmp_path / "outbox")
    pause = OutboxPause(outbox, clock=clock, first_wait=2, longest_wait=5)
    gone = OutboxUnavailable(errno.ENOSPC, outbox.root)
    assert [pause.pause(gone) for _ in range(4)] == [2, 4, 5, 5]
    assert pause.is_paused and not pause.is_due() and "The outbox is full" in pause.describe()
    clock.now += 5
    assert pause.is_due()
    with pytest.raises(OutboxUnavailable):
        pause.try_again()  # the folder is still missing
    (tmp_path / "outbox").mkdir()
    pause.try_again()
    assert not pause.is_paused and pause.last_pause_seconds == 5
    assert list((tmp_path / "outbox").iterdir()) == []  # the probe cleans up after itself
