"""sd_notify without systemd-python: real AF_UNIX datagrams to a socket the test binds as $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

import pytest

from tests.conftest import wait_for
from tests.fakes import RecordingNotifier
from vidrop.daemon.systemd import StartExtension, SystemdNotifier

# A child in which `import systemd` fails, as after a plain `pip install vidrop` (absence injected, not patched).
WITHOUT_SYSTEMD_PYTHON = (
    "import sys; sys.modules['systemd'] = None\n"
    "from vidrop.daemon.systemd import SystemdNotifier\n"
    "n = SystemdNotifier(); n.status('loading model'); n.extend_timeout(30); n.ready(); n.watchdog()\n"
    "n.reloading(); n.stopping()\n"
)


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(30)
    yield path, sock
    sock.close()


def received(sock, count: int) -> list[str]:
    return [sock.recv(4096).decode() for _ in range(count)]


def test_without_systemd_python_every_message_still_reaches_the_socket(listener):
    path, sock = listener
    env = {**os.environ, "NOTIFY_SOCKET": str(path)}
    subprocess.run([sys.executable, "-c", WITHOUT_SYSTEMD_PYTHON], env=env, check=True, timeout=60)
    messages = received(sock, 6)
    assert messages[0] == "STATUS=loading model"
    assert messages[1] == "EXTEND_TIMEOUT_USEC=30000000"
    assert messages[2:4] == ["READY=1", "WATCHDOG=1"]
    reloading = dict(line.split("=", 1) for line in messages[4].splitlines())
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    assert messages[5] == "STOPPING=1"


def test_an_abstract_socket_named_with_an_at_sign():
    name = f"vidrop-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(30)
    try:
        SystemdNotifier(environ={"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_no_notify_socket_or_one_that_is_gone_sends_nothing_and_raises_nothing(tmp_path):
    SystemdNotifier(environ={}).ready()
    SystemdNotifier(environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).ready()
    SystemdNotifier(environ={"NOTIFY_SOCKET": "relative.sock"}).ready()


def test_a_long_start_step_keeps_asking_for_more_time_until_it_ends():
    notifier = RecordingNotifier()
    with StartExtension(notifier, grant=90, every=0.01):
        wait_for(lambda: len(notifier.messages) >= 3, 30, what="three requests")
    count = len(notifier.messages)
    assert set(notifier.messages) == {"EXTEND_TIMEOUT_USEC=90000000"}
    assert len(notifier.messages) == count  # the thread has ended with the step
