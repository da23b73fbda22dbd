"""The watchdog observer: it only puts paths on a queue; the main loop decides what they mean."""

from __future__ import annotations

import queue
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent, FileModifiedEvent, FileMovedEvent,
    FileSystemEvent, FileSystemEventHandler,
)
from watchdog.observers import Observer

STOP = object()  # pushed onto the queue to wake the main loop at once
# The events the handler uses; asked of inotify alone, so that opening and reading files and folders (every
# reconcile opens each folder; admission reads each file) wakes nobody.
WANTED_EVENTS = [FileCreatedEvent, DirCreatedEvent, FileMovedEvent, DirMovedEvent, FileModifiedEvent, FileClosedEvent]


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
        self._observer = Observer()

    def start(self) -> None:
        """Start watching; raises OSError when inotify cannot be set up."""
        self._observer.schedule(_QueueingHandler(self.paths), str(self.inbox), recursive=True,
                                event_filter=WANTED_EVENTS)
        self._observer.start()

    def is_alive(self) -> bool:
        """Whether the observer thread still runs."""
        return self._observer.is_alive()

    def stop(self) -> None:
        """Stop and join the observer thread."""
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout=10)
