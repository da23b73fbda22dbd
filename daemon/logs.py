"""structlog set-up: journald fields under systemd, JSON lines on stderr, or a console format on a terminal."""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import sys
from typing import Any, Callable, Literal, TextIO

import structlog

from vidrop.config.settings import ServiceManager
from vidrop.daemon.console import TerminalLog, local_timestamp
from vidrop.daemon.names import printable

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# syslog priorities, as journald wants them in PRIORITY (journalctl -p err = 3 and below).
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "exception": 3, "critical": 2}
JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "vidrop"

JournalSend = Callable[..., None]


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console", "journal"] = "auto",
    stream: TextIO | None = None,
    manager: ServiceManager | None = None,
    journal_send: JournalSend | None = None,
) -> TerminalLog | None:
    """Configure structlog once at start: contextvars → level → exc_info → time → renderer or journald.
    JSON and journald get ISO UTC times; the console format local time, through the TerminalLog returned."""
    stream = stream or sys.stderr
    if fmt == "journal" or (fmt == "auto" and manager is not None and is_stderr_journal(manager, stream)):
        send, missing = (journal_send, "") if journal_send else journal_sender()
        _configure(level, JournalLogger(send, stream, missing=missing), [_as_event])
        return None
    if fmt == "console" or (fmt == "auto" and stream.isatty()):
        terminal = TerminalLog(stream)
        tail = [structlog.dev.set_exc_info, structlog.dev.ConsoleRenderer()]
        _configure(level, terminal, tail, stamp=local_timestamp)
        return terminal
    tail = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    _configure(level, structlog.PrintLogger(stream), tail)
    return None


def set_level(level: str) -> None:
    """Change the level of every logger at once (a reload); the renderer stays."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]))


def is_stderr_journal(manager: ServiceManager, stream: TextIO) -> bool:
    """Whether stderr is systemd's journal stream ($JOURNAL_STREAM names its device:inode).

    A unit whose output goes elsewhere (a file, a terminal) keeps the JSON or console format; without
    JOURNAL_STREAM, a process started by systemd (INVOCATION_ID) whose stderr is no terminal counts too.
    """
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    if manager.journal_stream:
        return manager.journal_stream == f"{status.st_dev}:{status.st_ino}"
    return manager.is_under_systemd and not stream.isatty()


def escape_names(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Names whose bytes are not UTF-8 as `\\xHH` text, with `KEY_hex` beside: no sink can refuse an event."""
    return printable(event_dict)


def _configure(level: str, sink: Any, tail: list, stamp: Any = None) -> None:
    *formatting, render = tail
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp or structlog.processors.TimeStamper(fmt="iso", utc=True),
            *formatting,
            escape_names,
            render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=lambda *args: sink,
        cache_logger_on_first_use=False,
    )
    # Libraries (diffusers, transformers) log through stdlib logging; keep their chatter at warning.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")


def _as_event(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    if "exc_info" in event_dict:
        event_dict = structlog.processors.format_exc_info(logger, method, event_dict)
    return {"event_dict": escape_names(logger, method, event_dict)}


def journal_sender(
    import_module: Callable[[str], Any] = importlib.import_module, socket_path: str = JOURNAL_SOCKET
) -> tuple[JournalSend | None, str]:
    """systemd-python's journal.send when journald listens, else None and which of the two is missing.

    sd_journal_send() drops messages silently when the socket does not exist, so ask the socket first.
    """
    try:
        journal = import_module("systemd.journal")
    except ImportError:
        return None, "the systemd Python module is not installed (pip install 'vidrop[systemd]'); logging to stderr"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(socket_path)
    except OSError as exc:
        return None, f"journald does not listen on {socket_path} ({exc.strerror}); logging to stderr"
    finally:
        probe.close()
    return journal.send, ""


def journal_fields(event_dict: dict[str, Any]) -> dict[str, str]:
    """An event as journald fields: MESSAGE, PRIORITY, and every key upper-cased (job_id → JOB_ID)."""
    event = dict(event_dict)
    name = str(event.pop("event", ""))
    level = str(event.pop("level", "info"))
    event.pop("timestamp", None)  # journald stamps every entry itself
    exception = event.pop("exception", None)
    fields = {_field_name(key): _field_value(value) for key, value in event.items()}
    summary = " ".join(f"{key}={_field_value(value)}" for key, value in event.items())
    message = f"{name} {summary}".strip()
    if exception:
        message = f"{message}\n{exception}"
        fields["EXCEPTION"] = str(exception)
    fields.update(
        MESSAGE=message,
        EVENT=name,
        PRIORITY=str(PRIORITIES.get(level, 6)),
        LEVEL=level,
        SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER,
    )
    return fields


def _field_name(key: str) -> str:
    cleaned = "".join(char if char.isalnum() else "_" for char in key.upper()).lstrip("_0123456789")
    return (cleaned or "FIELD")[:64]


def _field_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


class JournalLogger:
    """The sink under systemd: each event goes to journald; once journald cannot be reached, to stderr as JSON."""

    def __init__(self, send: JournalSend | None, fallback: TextIO, missing: str = "") -> None:
        self._send = send
        self._fallback = fallback
        if send is None:
            error = missing or "journald does not listen; logging to stderr"
            self._write_json(
                {"event": "journal_unreachable", "level": "warning", "socket": JOURNAL_SOCKET, "error": error}
            )

    @property
    def is_sending_to_journal(self) -> bool:
        """Whether events still go to journald."""
        return self._send is not None

    def msg(self, event_dict: dict[str, Any]) -> None:
        """Send one event."""
        if self._send is not None:
            try:
                fields = journal_fields(event_dict)
                self._send(fields.pop("MESSAGE"), **fields)
                return
            except OSError as exc:  # journald went away (or was never there): stderr from now on
                self._send = None
                self._write_json({"event": "journal_unreachable", "level": "warning", "error": str(exc)})
        self._write_json(event_dict)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg

    def _write_json(self, event_dict: dict[str, Any]) -> None:
        self._fallback.write(json.dumps(event_dict, default=str) + "\n")
        self._fallback.flush()
