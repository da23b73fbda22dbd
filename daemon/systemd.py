"""sd_notify: READY, STATUS, WATCHDOG, STOPPING. A no-op outside systemd."""

from __future__ import annotations

from typing import Protocol


class Notifier(Protocol):
    """What the daemon tells its service manager."""

    def ready(self) -> None: ...

    def status(self, text: str) -> None: ...

    def watchdog(self) -> None: ...

    def reloading(self) -> None: ...

    def stopping(self) -> None: ...


class SystemdNotifier:
    """Talks to systemd over $NOTIFY_SOCKET through systemd-python; silent when that is absent."""

    def __init__(self) -> None:
        try:
            from systemd import daemon as sd_daemon
        except ImportError:  # systemd-python not installed: behave as outside systemd
            sd_daemon = None
        self._daemon = sd_daemon
        self._last_status = ""

    def _send(self, message: str) -> None:
        if self._daemon is not None:
            self._daemon.notify(message)

    def ready(self) -> None:
        self._send("READY=1")

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self._send(f"STATUS={text}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")


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
