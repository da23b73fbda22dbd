"""sd_notify: READY, STATUS, WATCHDOG, RELOADING, STOPPING, EXTEND_TIMEOUT. A no-op outside systemd.

The protocol is one datagram on the AF_UNIX socket named by $NOTIFY_SOCKET ('@' for an abstract one), so it
is sent here in Python: a plain `pip install vidrop`, without systemd-python, still tells systemd it is ready.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Protocol


class Notifier(Protocol):
    """What the daemon tells its service manager."""

    def ready(self) -> None: ...

    def status(self, text: str) -> None: ...

    def watchdog(self) -> None: ...

    def reloading(self) -> None: ...

    def stopping(self) -> None: ...

    def extend_timeout(self, seconds: float) -> None: ...


def notify_address(environ: Mapping[str, str]) -> str | None:
    """The socket address from $NOTIFY_SOCKET: a path, or '\\0name' for '@name'; None if unset or unusable."""
    name = environ.get("NOTIFY_SOCKET", "")
    if name.startswith("@"):
        return "\0" + name[1:]
    return name if name.startswith("/") else None


class SystemdNotifier:
    """Talks to systemd over $NOTIFY_SOCKET; silent when that is unset (not started by systemd)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._address = notify_address(os.environ if environ is None else environ)
        self._last_status = ""

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(message.encode(), self._address)
            except OSError:  # systemd went away (or the socket is not one): as sd_notify(), nothing to do
                pass

    def ready(self) -> None:
        self._send("READY=1")

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self._send(f"STATUS={text}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        # Type=notify-reload (and systemd >= 253) wants the CLOCK_MONOTONIC time of the reload with it.
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for `seconds` more before the start (or stop) times out; sent again while it lasts."""
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


class NullNotifier:
    """A notifier that says nothing (tests, `vidrop once`)."""

    def ready(self) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def watchdog(self) -> None:
        pass

    def reloading(self) -> None:
        pass

    def stopping(self) -> None:
        pass

    def extend_timeout(self, seconds: float) -> None:
        pass


class StartExtension:
    """While a long start step runs (the model loading, compiling), ask systemd for more time every few seconds.

    Each EXTEND_TIMEOUT_USEC= asks for `grant` seconds from now, sent every `every` seconds from a thread, so the
    unit's TimeoutStartSec can stay short: a start that hangs outright still times out `grant` seconds later.
    """

    def __init__(self, notifier: Notifier, *, grant: float = 90.0, every: float = 20.0) -> None:
        self._notifier, self._grant, self._every = notifier, grant, every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep_asking, daemon=True, name="sd-extend-timeout")

    def __enter__(self) -> StartExtension:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def _keep_asking(self) -> None:
        while True:
            self._notifier.extend_timeout(self._grant)
            if self._done.wait(self._every):
                return
