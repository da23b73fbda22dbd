"""What each input looked like when it was taken, kept in the ledger: an unchanged file costs a stat or two,
also after a restart, instead of being hashed, decoded and validated again."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Protocol

from vidrop.daemon.intake.readiness import FileSnapshot, StatValues, parse_stamp
from vidrop.daemon.ledger.base import TakenInput

SAVE_EVERY = 500  # remembered inputs written to the ledger in one transaction


class TakenStore(Protocol):
    """Where remembered inputs live between runs (the ledger)."""

    def remember_inputs(self, inputs: list[TakenInput]) -> None:
        """Store or replace these inputs' snapshots."""

    def taken_inputs(self) -> Iterator[tuple[str, str, str | None]]:
        """(path, input_stat, sidecar_stat) of every remembered input whose job still exists."""

    def forget_inputs(self, paths: list[str]) -> None:
        """Drop the snapshots of inputs that are gone."""


def fingerprint(main: StatValues, sidecar: StatValues | None) -> int:
    """An input's state in one int: its main file's stat values (image, or a sidecar alone) and its sidecar's.

    A hash, to keep 100,000 of them small and cheap to compare; it only has to tell a file from its own
    earlier state (two different states collide with a chance of 2**-64), and only within this process.
    """
    return hash((main, sidecar))


class TakenInputs:
    """Fingerprints of taken inputs, by folder then name (50,000 inputs take about 12 MB)."""

    def __init__(self, inbox: Path, store: TakenStore | None = None) -> None:
        self._root = str(inbox)
        self.store = store
        self._folders: dict[str, dict[str, int]] = {}
        self._unsaved: list[TakenInput] = []

    def __len__(self) -> int:
        return sum(len(names) for names in self._folders.values())

    def load(self) -> int:
        """Read what the ledger remembers; how many inputs that is."""
        if self.store is not None:
            for path, input_stat, sidecar_stat in self.store.taken_inputs():
                folder, _, name = f"{self._root}/{path}".rpartition("/")
                self._folders.setdefault(folder, {})[name] = fingerprint(
                    parse_stamp(input_stat), None if sidecar_stat is None else parse_stamp(sidecar_stat)
                )
        return len(self)

    def in_folder(self, folder: str) -> dict[str, int]:
        """Fingerprints of the inputs taken in one folder, by name (empty if none; do not change it)."""
        return self._folders.get(folder, _NONE)

    def is_unchanged(self, path: str, state: int) -> bool:
        """Whether the input at path was taken with this fingerprint."""
        folder, _, name = path.rpartition("/")
        return self._folders.get(folder, _NONE).get(name) == state

    def mark(self, path: str, state: int) -> None:
        """The input was taken now with this fingerprint (in memory; `remember` makes it last)."""
        folder, _, name = path.rpartition("/")
        self._folders.setdefault(folder, {})[name] = state

    def drop(self, path: str) -> None:
        """Look at the input again (released, or it could not be admitted)."""
        folder, _, name = path.rpartition("/")
        self._folders.get(folder, {}).pop(name, None)

    def remember(
        self, main: Path, main_snapshot: FileSnapshot, sidecar_snapshot: FileSnapshot | None, job_key: str, now: float
    ) -> None:
        """The input became jobs (or a refusal): keep its snapshot in the ledger, written in batches."""
        if self.store is None:
            return
        self._unsaved.append(
            TakenInput(
                self._relative(str(main)),
                main_snapshot.stamp,
                None if sidecar_snapshot is None else sidecar_snapshot.stamp,
                job_key,
                now,
            )
        )
        if len(self._unsaved) >= SAVE_EVERY:
            self.save()

    def save(self) -> None:
        """Write what was remembered since the last save."""
        if self.store is not None and self._unsaved:
            unsaved, self._unsaved = self._unsaved, []
            self.store.remember_inputs(unsaved)

    def prune_folder(self, folder: str, present: Iterable[str]) -> int:
        """A folder was listed: forget its inputs that are no longer there; how many."""
        known = self._folders.get(folder)
        if not known:
            return 0
        gone = known.keys() - set(present)
        for name in gone:
            del known[name]
        if not known:
            del self._folders[folder]
        self._forget([f"{folder}/{name}" for name in gone])
        return len(gone)

    def prune_folders(self, listed: set[str], failed: set[str]) -> int:
        """After a full scan: forget the inputs of folders that are gone; how many.

        A folder is gone when the scan listed its parent but not the folder; below a folder it could not
        list, nothing is known, so nothing is forgotten.
        """
        verdicts: dict[str, bool] = {}

        def is_gone(folder: str) -> bool:
            if folder not in verdicts:
                parent = os.path.dirname(folder)
                if folder in listed or folder in failed or parent == folder or not folder.startswith(self._root):
                    verdicts[folder] = False
                else:
                    verdicts[folder] = parent in listed or is_gone(parent)
            return verdicts[folder]

        gone = [folder for folder in self._folders if is_gone(folder)]
        paths = [f"{folder}/{name}" for folder in gone for name in self._folders.pop(folder)]
        self._forget(paths)
        return len(paths)

    def _forget(self, paths: list[str]) -> None:
        if paths and self.store is not None:
            self.store.forget_inputs([self._relative(path) for path in paths])

    def _relative(self, path: str) -> str:
        return path[len(self._root) + 1 :].replace(os.sep, "/")


_NONE: dict[str, int] = {}
