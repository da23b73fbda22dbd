"""Inputs noticed but not yet taken: waiting to settle, and images waiting for their sidecar."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from daemon.intake.pairing import images_for, sidecar_for
from daemon.intake.readiness import FileSnapshot, SettleTracker, is_image_name, is_junk, is_sidecar_name
from daemon.intake.scan import scan_images


@dataclass(frozen=True)
class ReadyInput:
    """An image that has settled, with its settled sidecar (None: the pairing window passed without one)."""

    image: Path
    sidecar: Path | None
    image_snapshot: FileSnapshot
    sidecar_snapshot: FileSnapshot | None


class PendingInputs:
    """Collects paths from events and scans; hands out inputs once they are complete and paired."""

    def __init__(self, inbox: Path, *, settle_seconds: float, pairing_seconds: float) -> None:
        self.inbox = inbox
        self.pairing_seconds = pairing_seconds
        self._tracker = SettleTracker(settle_seconds)
        self._waiting: set[Path] = set()
        # What was last handed out per image, so a rescan of an unchanged file costs one stat.
        self._taken: dict[Path, tuple[FileSnapshot, FileSnapshot | None]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def notice(self, path: Path) -> None:
        """A path was created, changed or moved in: decide what, if anything, it may become."""
        try:
            relative = path.relative_to(self.inbox)
        except ValueError:
            return
        if any(is_junk(part) for part in relative.parts):
            return
        if is_image_name(path.name):
            self._waiting.add(path)
        elif is_sidecar_name(path.name):
            self._waiting.update(images_for(path))
        elif path.is_dir() and not path.is_symlink():
            self._waiting.update(scan_images(path))

    def notice_all(self) -> None:
        """The reconcile scan: notice every image in the inbox."""
        self._waiting.update(scan_images(self.inbox))

    def take_ready(self, now_wall: float) -> list[ReadyInput]:
        """Inputs that are complete now, oldest change first; unchanged, already-taken ones are dropped."""
        ready = []
        for image in sorted(self._waiting):
            decision = self._judge(image, now_wall)
            if decision is _WAIT:
                continue
            self._waiting.discard(image)
            if decision is not _GONE:
                ready.append(decision)
        ready.sort(key=lambda item: item.image_snapshot.last_change)
        return ready

    def _judge(self, image: Path, now_wall: float):
        image_snapshot = FileSnapshot.of(image)
        if image_snapshot is None:
            self._tracker.forget(image)
            return _GONE
        sidecar = sidecar_for(image)
        sidecar_snapshot = FileSnapshot.of(sidecar)
        if self._taken.get(image) == (image_snapshot, sidecar_snapshot):
            return _GONE
        if not self._tracker.is_settled(image, now_wall):
            return _WAIT
        if sidecar_snapshot is not None:
            if not self._tracker.is_settled(sidecar, now_wall):
                return _WAIT
        elif now_wall - image_snapshot.last_change < self.pairing_seconds:
            return _WAIT
        self._tracker.forget(image)
        self._tracker.forget(sidecar)
        self._taken[image] = (image_snapshot, sidecar_snapshot)
        return ReadyInput(image, sidecar if sidecar_snapshot else None, image_snapshot, sidecar_snapshot)


_WAIT = object()
_GONE = object()
