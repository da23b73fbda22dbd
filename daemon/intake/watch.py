"""The watchdog observer: it only puts paths on a queue; the main loop decides what they mean."""

from __future__ import annotations

import errno
import os
import queue
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver
from watchdog.observers.inotify import InotifyEmitter, InotifyObserver
from watchdog.observers.inotify_c import InotifyFD

STOP = object()  # pushed onto the queue to wake the main loop at once
# Errors of inotify_init / inotify_add_watch that mean a kernel limit, not a problem with the inbox.
INOTIFY_LIMIT_ERRORS = (errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM)
# The events the handler uses; asked of inotify alone, so that opening and reading files and folders (every
# reconcile opens each folder; admission reads each file) wakes nobody.
WANTED_EVENTS = [FileCreatedEvent, DirCreatedEvent, FileMovedEvent, DirMovedEvent, FileModifiedEvent, FileClosedEvent]


@dataclass(frozen=True)
class WatchLimitReached:
    """Put on the queue when inotify could not watch a folder: the folders beyond the limit raise no events."""

    error: OSError
    folder: Path


class _ReportingInotifyFD(InotifyFD):
    """watchdog's inotify descriptor, telling the queue when a watch fails for a kernel limit.

    watchdog gives up silently on a folder it cannot watch (only the inbox root's failure reaches the caller),
    so this is the one place where ENOSPC below the root can be seen.
    """

    def __init__(self, paths: queue.Queue) -> None:
        super().__init__()
        self._paths = paths
        self.limit_reached: WatchLimitReached | None = None

    def add_callback(self, path, mask, callback, id_):
        try:
            return super().add_callback(path, mask, callback, id_)
        except OSError as exc:
            if exc.errno in INOTIFY_LIMIT_ERRORS and self.limit_reached is None:
                self.limit_reached = WatchLimitReached(exc, Path(os.fsdecode(path)))
                self._paths.put(self.limit_reached)
            raise


class _ReportingObserver(InotifyObserver):
    """InotifyObserver on a _ReportingInotifyFD (its __init__ would make a plain one)."""

    def __init__(self, paths: queue.Queue) -> None:
        self._inotify_fd = _ReportingInotifyFD(paths)  # inotify_init: EMFILE at the instance limit
        self._inotify_fd.start()
        BaseObserver.__init__(self, InotifyEmitter, timeout=DEFAULT_OBSERVER_TIMEOUT, inotify_fd=self._inotify_fd)

    @property
    def limit_reached(self) -> WatchLimitReached | None:
        return self._inotify_fd.limit_reached


class _QueueingHandler(FileSystemEventHandler):
    def __init__(self, paths: queue.Queue) -> None:
        self.paths = paths

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory and event.event_type not in ("moved", "created"):
            return
        if event.event_type in ("opened", "closed_no_write", "deleted"):
            return
        target = getattr(event, "dest_path", "") or event.src_path
        self.paths.put(Path(target if isinstance(target, str) else target.decode()))


class InboxWatcher:
    """A recursive observer on the inbox feeding a queue of paths."""

    def __init__(self, inbox: Path, paths: queue.Queue) -> None:
        self.inbox = inbox
        self.paths = paths
        self._observer: _ReportingObserver | None = None

    def start(self) -> None:
        """Start watching; raises OSError when inotify cannot be set up (EMFILE: no inotify instance left,
        ENOSPC: not even the inbox itself can be watched). A folder below it that cannot be watched puts a
        WatchLimitReached on the queue."""
        self._observer = _ReportingObserver(self.paths)
        try:
            self._observer.schedule(
                _QueueingHandler(self.paths), str(self.inbox), recursive=True, event_filter=WANTED_EVENTS
            )
            self._observer.start()
        except BaseException:
            self._observer.on_thread_stop()  # the inotify descriptor's own thread runs already
            raise

    def is_alive(self) -> bool:
        """Whether the observer thread still runs."""
        return self._observer is not None and self._observer.is_alive()

    @property
    def limit_reached(self) -> WatchLimitReached | None:
        """The first folder that could not be watched for a kernel limit (also put on the queue), if any."""
        return None if self._observer is None else self._observer.limit_reached

    def stop(self) -> None:
        """Stop and join the observer thread."""
        if self._observer is not None and self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout=10)
