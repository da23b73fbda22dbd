"""Inputs noticed but not yet taken: waiting to settle, images waiting for a sidecar, sidecars for an image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from daemon.intake.pairing import images_for, sidecar_for
from daemon.intake.readiness import FileSnapshot, JunkFilter, SettleTracker, is_image_name, is_sidecar_name


@dataclass(frozen=True)
class ReadyInput:
    """A settled image with its settled sidecar, or one of them alone once the pairing window passed."""

    image: Path | None
    sidecar: Path | None
    image_snapshot: FileSnapshot | None
    sidecar_snapshot: FileSnapshot | None

    @property
    def last_change(self) -> float:
        snapshot = self.image_snapshot or self.sidecar_snapshot
        return snapshot.last_change if snapshot else 0.0


class PendingInputs:
    """Collects paths from events and scans; hands out inputs once they are complete and paired."""

    def __init__(self, inbox: Path, *, is_junk: JunkFilter, settle_seconds: float, pairing_seconds: float,
                 reopen: bool = False) -> None:
        self.inbox = inbox
        self.is_junk = is_junk
        self.pairing_seconds = pairing_seconds
        self._tracker = SettleTracker(settle_seconds, reopen=reopen)
        self._images: set[Path] = set()
        self._sidecars: set[Path] = set()  # sidecars with no image (yet)
        self._not_before: dict[Path, float] = {}
        # What was last handed out per path, so a rescan of an unchanged file costs one stat.
        self._taken: dict[Path, tuple[FileSnapshot | None, FileSnapshot | None]] = {}

    def __len__(self) -> int:
        return len(self._images) + len(self._sidecars)

    def notice(self, path: Path) -> None:
        """A path was created, changed or moved in: decide what, if anything, it may become."""
        try:
            relative = path.relative_to(self.inbox)
        except ValueError:
            return
        if not relative.parts or any(self.is_junk(part) for part in relative.parts):
            return
        if is_image_name(path.name):
            self._images.add(path)
        elif is_sidecar_name(path.name):
            images = images_for(path, self.is_junk)
            self._images.update(images)
            if not images:
                self._sidecars.add(path)

    def release(self, path: Path, *, not_before: float) -> None:
        """Look at a taken input again later (it did not decode yet, or could not be read)."""
        self._taken.pop(path, None)
        self._not_before[path] = not_before
        self.notice(path)

    def take_ready(self, now_wall: float) -> list[ReadyInput]:
        """Inputs that are complete now, oldest change first; unchanged, already-taken ones are dropped."""
        ready = self._take(self._images, self._judge_image, now_wall)
        ready += self._take(self._sidecars, self._judge_lone_sidecar, now_wall)
        ready.sort(key=lambda item: item.last_change)
        return ready

    @staticmethod
    def _take(waiting: set[Path], judge, now_wall: float) -> list[ReadyInput]:
        taken = []
        for path in sorted(waiting):
            decision = judge(path, now_wall)
            if decision is _WAIT:
                continue
            waiting.discard(path)
            if decision is not _GONE:
                taken.append(decision)
        return taken

    def _judge_image(self, image: Path, now_wall: float):
        if now_wall < self._not_before.get(image, 0.0):
            return _WAIT
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
        self._not_before.pop(image, None)
        self._taken[image] = (image_snapshot, sidecar_snapshot)
        return ReadyInput(image, sidecar if sidecar_snapshot else None, image_snapshot, sidecar_snapshot)

    def _judge_lone_sidecar(self, sidecar: Path, now_wall: float):
        snapshot = FileSnapshot.of(sidecar)
        if snapshot is None or images_for(sidecar, self.is_junk):
            self._tracker.forget(sidecar)
            return _GONE  # gone, or its image came: the image is judged on its own
        if self._taken.get(sidecar) == (None, snapshot):
            return _GONE
        if not self._tracker.is_settled(sidecar, now_wall) or now_wall - snapshot.last_change < self.pairing_seconds:
            return _WAIT
        self._tracker.forget(sidecar)
        self._taken[sidecar] = (None, snapshot)
        return ReadyInput(None, sidecar, None, snapshot)


_WAIT = object()
_GONE = object()
