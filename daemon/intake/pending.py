"""Inputs noticed but not yet taken: waiting to settle, images waiting for a sidecar, sidecars for an image."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from daemon.intake.pairing import images_for, sidecar_for
from daemon.intake.readiness import (
    SIDECAR_SUFFIX, FileSnapshot, JunkFilter, SettleTracker, is_image_name, is_sidecar_name,
)
from daemon.intake.scan import Listing
from daemon.intake.taken import TakenInputs, fingerprint


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
                 reopen: bool = False, taken: TakenInputs | None = None) -> None:
        self.inbox = inbox
        self.is_junk = is_junk
        self.pairing_seconds = pairing_seconds
        self._tracker = SettleTracker(settle_seconds, reopen=reopen)
        self._images: set[Path] = set()
        self._sidecars: set[Path] = set()  # sidecars with no image (yet)
        self._not_before: dict[Path, float] = {}
        # What was last handed out per path (this run's and, from the ledger, earlier runs'), so a rescan
        # of an unchanged input costs a stat or two.
        self.taken = taken if taken is not None else TakenInputs(inbox)
        self.passed_over = 0  # inputs a scan found unchanged since they were taken (for tests and logs)

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

    def notice_listing(self, listing: Listing) -> None:
        """A scan listed a folder: pair its names here (no listing per sidecar), pass over every input
        unchanged since it was taken, and forget those that are gone."""
        folder, images, sidecars = listing.folder, listing.images, listing.sidecars
        if not self._is_inside(folder):
            return
        taken = self.taken.in_folder(folder)
        image_stems = set()
        for name, image_stat in images.items():
            stem = name[: name.rfind(".")]
            image_stems.add(stem)
            if taken.get(name) == fingerprint(image_stat, sidecars.get(stem + SIDECAR_SUFFIX)):
                self.passed_over += 1
            else:
                self._images.add(Path(f"{folder}/{name}"))
        for name, sidecar_stat in sidecars.items():
            if name[: -len(SIDECAR_SUFFIX)] in image_stems:
                continue  # judged with its image
            if taken.get(name) == fingerprint(sidecar_stat, None):
                self.passed_over += 1
            else:
                self._sidecars.add(Path(f"{folder}/{name}"))
        if taken:
            self.taken.prune_folder(folder, [*images, *sidecars])

    def _is_inside(self, folder: str) -> bool:
        root = str(self.inbox)
        if folder != root and not folder.startswith(root + os.sep):
            return False
        relative = folder[len(root) + 1:]
        return not relative or not any(self.is_junk(part) for part in relative.split(os.sep))

    def release(self, path: Path, *, not_before: float) -> None:
        """Look at a taken input again later (it did not decode yet, or could not be read)."""
        self.taken.drop(str(path))
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
        state = fingerprint(image_snapshot.values, sidecar_snapshot and sidecar_snapshot.values)
        if self.taken.is_unchanged(str(image), state):
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
        self.taken.mark(str(image), state)
        return ReadyInput(image, sidecar if sidecar_snapshot else None, image_snapshot, sidecar_snapshot)

    def _judge_lone_sidecar(self, sidecar: Path, now_wall: float):
        snapshot = FileSnapshot.of(sidecar)
        if snapshot is None or images_for(sidecar, self.is_junk):
            self._tracker.forget(sidecar)
            return _GONE  # gone, or its image came: the image is judged on its own
        state = fingerprint(snapshot.values, None)
        if self.taken.is_unchanged(str(sidecar), state):
            return _GONE
        if not self._tracker.is_settled(sidecar, now_wall) or now_wall - snapshot.last_change < self.pairing_seconds:
            return _WAIT
        self._tracker.forget(sidecar)
        self.taken.mark(str(sidecar), state)
        return ReadyInput(None, sidecar, None, snapshot)


_WAIT = object()
_GONE = object()
