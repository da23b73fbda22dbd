"""When is a dropped file a real, complete input: junk names, the settle window, busy markers."""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from daemon.outbox import TEMP_PREFIX
from pipeline.images import IMAGE_SUFFIXES

SIDECAR_SUFFIX = ".json"
DEFAULTS_NAME = "_defaults.json"
IMAGE, SIDECAR = "image", "sidecar"  # what is_input_name() says a name is
FINDER_INFO_ATTRIBUTES = ("com.apple.FinderInfo", "user.com.apple.FinderInfo")
FINDER_BUSY = b"brokMACS"  # Finder's file type/creator while a copy is in progress


class JunkFilter:
    """Names that producers use for files in progress or for their own bookkeeping; never jobs."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(pattern.lower() for pattern in patterns) + (TEMP_PREFIX.lower() + "*",)
        # One regular expression for all patterns: a scan asks about every name in the inbox.
        self._matches = re.compile("|".join(f"(?:{fnmatch.translate(pattern)})" for pattern in self.patterns)).match

    def __call__(self, name: str) -> bool:
        return self._matches(name.lower()) is not None


def is_image_name(name: str) -> bool:
    """Whether the name has an image extension (.png, .JPG, ...)."""
    dot = name.rfind(".")  # as Path(name).suffix, without building a Path for every name a scan meets
    return 0 < dot < len(name) - 1 and name[dot:].lower() in IMAGE_SUFFIXES


def is_input_name(name: str) -> str | None:
    """IMAGE, SIDECAR or None: `is_image_name` and `is_sidecar_name` in one look (a scan asks of every name)."""
    lowered = name.lower()
    if lowered.endswith(SIDECAR_SUFFIX):
        return SIDECAR if lowered != DEFAULTS_NAME else None
    dot = lowered.rfind(".")
    return IMAGE if 0 < dot < len(lowered) - 1 and lowered[dot:] in IMAGE_SUFFIXES else None


def is_sidecar_name(name: str) -> bool:
    """Whether the name is a per-image sidecar (NAME.json, not _defaults.json)."""
    return name.lower().endswith(SIDECAR_SUFFIX) and name.lower() != DEFAULTS_NAME


def is_finder_busy(path: Path) -> bool:
    """Whether macOS Finder marks the file as still being copied (its FinderInfo says 'brokMACS')."""
    for attribute in FINDER_INFO_ATTRIBUTES:
        try:
            if os.getxattr(path, attribute, follow_symlinks=False)[:8] == FINDER_BUSY:
                return True
        except OSError:
            continue
    return False


StatValues = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


@dataclass(frozen=True)
class FileSnapshot:
    """What stat says about a file; equal snapshots mean nobody wrote in between."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileSnapshot | None:
        """lstat: links are never followed out of the inbox; None if gone or not a regular file."""
        try:
            result = os.stat(path, follow_symlinks=False)
        except OSError:
            return None
        if not stat.S_ISREG(result.st_mode):
            return None
        return cls(result.st_size, result.st_mtime_ns, result.st_ctime_ns, result.st_ino)

    @classmethod
    def after_open(cls, path: Path) -> FileSnapshot | None:
        """fstat after open(): on NFS, open revalidates the attribute cache (close-to-open consistency)."""
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            result = os.fstat(descriptor)
        finally:
            os.close(descriptor)
        if not stat.S_ISREG(result.st_mode):
            return None
        return cls(result.st_size, result.st_mtime_ns, result.st_ctime_ns, result.st_ino)

    @property
    def values(self) -> StatValues:
        """size, mtime_ns, ctime_ns, inode."""
        return self.size, self.mtime_ns, self.ctime_ns, self.inode

    @property
    def stamp(self) -> str:
        """The snapshot as one short text: what the ledger keeps of an input that was taken."""
        return ":".join(str(value) for value in self.values)

    @property
    def last_change(self) -> float:
        """The latest of mtime and ctime (a rename into place changes ctime), in seconds."""
        return max(self.mtime_ns, self.ctime_ns) / 1e9


def stat_values(result: os.stat_result) -> StatValues:
    """What a FileSnapshot keeps, straight from a stat result (a reconcile asks it of every file)."""
    return result.st_size, result.st_mtime_ns, result.st_ctime_ns, result.st_ino


def parse_stamp(stamp: str) -> StatValues:
    """The values of a `FileSnapshot.stamp`."""
    size, mtime_ns, ctime_ns, inode = (int(part) for part in stamp.split(":"))
    return size, mtime_ns, ctime_ns, inode


class SettleTracker:
    """A file is settled once its snapshot stayed the same over the settle window."""

    def __init__(self, settle_seconds: float, *, reopen: bool = False) -> None:
        self.settle_seconds = settle_seconds
        self.reopen = reopen
        self._seen: dict[Path, tuple[FileSnapshot, float]] = {}

    def is_settled(self, path: Path, now_wall: float) -> bool:
        """Stat the file; True when it has not changed for settle_seconds (wall clock, like file times).

        ctime moves on every write, rename and utime, and nobody can set it back, so a file whose
        mtime and ctime are both older than the window was not touched during it: one stat is enough
        for files that sat in the inbox while the daemon was down.
        """
        snapshot = FileSnapshot.of(path)
        if snapshot is None:
            self._seen.pop(path, None)
            return False
        previous = self._seen.get(path)
        if previous is None or previous[0] != snapshot:
            stable_since = min(snapshot.last_change, now_wall)
            self._seen[path] = (snapshot, stable_since)
        else:
            stable_since = previous[1]
        if now_wall - stable_since < self.settle_seconds:
            return False
        if self.reopen and FileSnapshot.after_open(path) != snapshot:
            self._seen.pop(path, None)
            return False
        return not is_finder_busy(path)

    def forget(self, path: Path) -> None:
        """Stop tracking a path (taken, or gone)."""
        self._seen.pop(path, None)
