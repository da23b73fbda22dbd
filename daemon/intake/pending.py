"""Inputs noticed but not yet taken: waiting to settle, images waiting for a sidecar, sidecars for an image."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from vidrop.daemon.intake.pairing import FolderNames, images_for, sidecar_for, sidecars_for, unknown_images_for
from vidrop.daemon.intake.readiness import (
    SIDECAR_SUFFIX,
    FileSnapshot,
    JunkFilter,
    OpenWriters,
    SettleTracker,
    find_unfinished_file,
    is_image_name,
    is_sidecar_name,
)
from vidrop.daemon.intake.scan import Listing
from vidrop.daemon.intake.taken import TakenInputs, fingerprint
from vidrop.pipeline.images import Unfinished

log = structlog.get_logger()

MAX_CHECKED_BYTES = 1 << 29  # larger files are not read for signs of an unfinished copy (refused by size anyway)


@dataclass(frozen=True)
class ReadyInput:
    """A settled image with its settled sidecar, or one of them alone once the pairing window passed."""

    image: Path | None
    sidecar: Path | None
    image_snapshot: FileSnapshot | None
    sidecar_snapshot: FileSnapshot | None
    stable_seconds: float = 0.0  # how long we saw the main file unchanged before handing it out (monotonic)
    unfinished: Unfinished | None = None  # what still looked unfinished when the decode grace ran out
    sidecar_conflict: tuple[Path, ...] = ()  # a.json and a.JSON: more than one sidecar for the image

    @property
    def last_change(self) -> float:
        snapshot = self.image_snapshot or self.sidecar_snapshot
        return snapshot.last_change if snapshot else 0.0


class PendingInputs:
    """Collects paths from events and scans; hands out inputs once they are complete and paired.

    Complete means, beyond an unchanged stat over the settle window: no process holds the file open for
    writing, and the file's own structure shows no part still to be written (a preallocated file of its
    final size that is still being filled in). A file that still looks unfinished waits until it has been
    unchanged for the decode grace; then it is handed out with what was found, for the admission to judge.
    All waiting is measured on the monotonic clock by our own observations, never with the files' times.
    """

    def __init__(
        self,
        inbox: Path,
        *,
        is_junk: JunkFilter,
        settle_seconds: float,
        pairing_seconds: float,
        reopen: bool = False,
        taken: TakenInputs | None = None,
        grace_seconds: float = 60.0,
        writers: OpenWriters | None = None,
        max_bytes: int = MAX_CHECKED_BYTES,
    ) -> None:
        self.inbox = inbox
        self.is_junk = is_junk
        self.pairing_seconds = pairing_seconds
        self.grace_seconds = grace_seconds
        self.max_bytes = max_bytes
        self._tracker = SettleTracker(settle_seconds, reopen=reopen)
        self._writers = writers if writers is not None else OpenWriters()
        self._names = FolderNames()
        self._images: set[Path] = set()
        self._sidecars: set[Path] = set()  # sidecars with no image (yet)
        self._not_before: dict[Path, float] = {}
        self._checked: dict[Path, tuple[FileSnapshot, Unfinished | None]] = {}
        self._reported: dict[Path, str] = {}  # what the last input_still_arriving event said, per path
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
        sidecar_by_stem = {name[: -len(SIDECAR_SUFFIX)]: values for name, values in sidecars.items()}
        image_stems = set()
        for name, image_stat in images.items():
            stem = name[: name.rfind(".")]
            image_stems.add(stem)
            if taken.get(name) == fingerprint(image_stat, sidecar_by_stem.get(stem)):
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
        relative = folder[len(root) + 1 :]
        return not relative or not any(self.is_junk(part) for part in relative.split(os.sep))

    def release(self, path: Path, *, not_before: float) -> None:
        """Look at a taken input again later (it did not decode yet, or could not be read); not_before is
        monotonic. What was seen of it stays: its grace is not started again."""
        self.taken.drop(str(path))
        self._not_before[path] = not_before
        for seen in (path, *sidecars_for(path)):
            self._tracker.unpark(seen)
        self.notice(path)

    def take_ready(self, now: float) -> list[ReadyInput]:
        """Inputs that are complete now (now: monotonic), oldest change first; unchanged, already-taken
        ones are dropped."""
        self._tracker.drop_parked()
        self._writers.refresh()
        self._names.clear()
        ready = self._take(self._images, self._judge_image, now)
        ready += self._take(self._sidecars, self._judge_lone_sidecar, now)
        ready.sort(key=lambda item: item.last_change)
        return ready

    @staticmethod
    def _take(waiting: set[Path], judge, now: float) -> list[ReadyInput]:
        taken = []
        for path in sorted(waiting):
            decision = judge(path, now)
            if decision is _WAIT:
                continue
            waiting.discard(path)
            if decision is not _GONE:
                taken.append(decision)
        return taken

    def _judge_image(self, image: Path, now: float):
        if now < self._not_before.get(image, 0.0):
            return _WAIT
        image_snapshot = FileSnapshot.of(image)
        if image_snapshot is None:
            self._forget(image)
            return _GONE
        sidecars = sidecars_for(image, self._names)
        sidecar = sidecars[0] if sidecars else sidecar_for(image)
        sidecar_snapshot = FileSnapshot.of(sidecar)
        state = fingerprint(image_snapshot.values, sidecar_snapshot and sidecar_snapshot.values)
        if self.taken.is_unchanged(str(image), state):
            return _GONE
        # Both are observed at every look, so that the sidecar's window runs alongside the image's.
        is_image_settled = self._tracker.is_settled(image, now)
        if sidecar_snapshot is not None and not self._tracker.is_settled(sidecar, now) or not is_image_settled:
            return _WAIT
        stable = self._tracker.stable_for(image, image_snapshot, now)
        if sidecar_snapshot is None and stable < self.pairing_seconds:
            return _WAIT
        unfinished = self._unfinished(image, image_snapshot, stable)
        if unfinished is _WAIT:
            return _WAIT
        if sidecar_snapshot is not None:
            sidecar_stable = self._tracker.stable_for(sidecar, sidecar_snapshot, now)
            if self._unfinished(sidecar, sidecar_snapshot, sidecar_stable) is _WAIT:
                return _WAIT
        self._forget(image, park=True)
        self._forget(sidecar, park=True)
        self._not_before.pop(image, None)
        self.taken.mark(str(image), state)
        return ReadyInput(
            image,
            sidecar if sidecar_snapshot else None,
            image_snapshot,
            sidecar_snapshot,
            stable_seconds=stable,
            unfinished=unfinished,
            sidecar_conflict=tuple(sidecars) if len(sidecars) > 1 else (),
        )

    def _judge_lone_sidecar(self, sidecar: Path, now: float):
        if now < self._not_before.get(sidecar, 0.0):
            return _WAIT
        snapshot = FileSnapshot.of(sidecar)
        if snapshot is None or images_for(sidecar, self.is_junk):
            self._forget(sidecar)
            return _GONE  # gone, or its image came: the image is judged on its own
        state = fingerprint(snapshot.values, None)
        if self.taken.is_unchanged(str(sidecar), state):
            return _GONE
        if not self._tracker.is_settled(sidecar, now):
            return _WAIT
        stable = self._tracker.stable_for(sidecar, snapshot, now)
        if stable < self.pairing_seconds:
            return _WAIT
        unfinished = self._unfinished(sidecar, snapshot, stable)
        if unfinished is _WAIT:
            return _WAIT
        self._forget(sidecar, park=True)
        self._not_before.pop(sidecar, None)
        self.taken.mark(str(sidecar), state)
        # An image beside it under a name vidrop does not take (`photo`, `photo.jpg_large`): the prompt is
        # for that picture, so it is refused by its format rather than made into a video without it.
        beside = unknown_images_for(sidecar, self.is_junk)
        if beside:
            return ReadyInput(beside[0], sidecar, FileSnapshot.of(beside[0]), snapshot, stable_seconds=stable)
        return ReadyInput(None, sidecar, None, snapshot, stable_seconds=stable, unfinished=unfinished)

    def _unfinished(self, path: Path, snapshot: FileSnapshot, stable: float):
        """_WAIT while a writer holds the file or it looks unfinished within the grace; else what was found."""
        writer = self._writers.writer_of(path)
        if writer is not None:
            self._report(path, "open for writing", writer=writer)
            return _WAIT
        checked = self._checked.get(path)
        if checked is None or checked[0] != snapshot:
            checked = (snapshot, find_unfinished_file(path, max_bytes=self.max_bytes))
            self._checked[path] = checked
        unfinished = checked[1]
        if unfinished is not None and stable < self.grace_seconds:
            self._report(path, unfinished.reason, waits_seconds=round(self.grace_seconds - stable, 1))
            return _WAIT
        return unfinished

    def _report(self, path: Path, reason: str, **fields) -> None:
        if self._reported.get(path) != reason:
            self._reported[path] = reason
            log.info("input_still_arriving", input=str(path), reason=reason, **fields)

    def _forget(self, path: Path, *, park: bool = False) -> None:
        if park:
            self._tracker.park(path)
        else:
            self._tracker.forget(path)
        self._checked.pop(path, None)
        self._reported.pop(path, None)


_WAIT = object()
_GONE = object()
