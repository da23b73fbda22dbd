"""When is a dropped file a real, complete input: junk names and the settle window."""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from daemon.outbox import TEMP_PREFIX
from pipeline.images import IMAGE_SUFFIXES

SIDECAR_SUFFIX = ".json"
DEFAULTS_NAME = "_defaults.json"

# Names that producers use for files in progress or for their own bookkeeping; never jobs.
JUNK_PATTERNS = (
    ".*",  # rsync's .name.XXXXXX, .DS_Store, ._AppleDouble, .syncthing.*.tmp, .goutputstream-*
    "~syncthing~*", "*~", "~$*", "*.part", "*.crdownload", "*.tmp", "*.swp", "Thumbs.db", "desktop.ini",
    "@eaDir", "$RECYCLE.BIN", TEMP_PREFIX + "*",
)


def is_junk(name: str, patterns: tuple[str, ...] = JUNK_PATTERNS) -> bool:
    """Whether a file or folder name is a temporary or bookkeeping name (case-insensitive)."""
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in patterns)


def is_image_name(name: str) -> bool:
    """Whether the name has an image extension (.png, .JPG, ...)."""
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def is_sidecar_name(name: str) -> bool:
    """Whether the name is a per-image sidecar (NAME.json, not _defaults.json)."""
    return name.lower().endswith(SIDECAR_SUFFIX) and name.lower() != DEFAULTS_NAME


@dataclass(frozen=True)
class FileSnapshot:
    """What stat says about a file; equal snapshots mean nobody wrote in between."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileSnapshot | None:
        """stat without following links out of the inbox; None if it is gone or not a regular file."""
        try:
            result = os.stat(path, follow_symlinks=False)
        except OSError:
            return None
        if not _is_regular(result.st_mode):
            return None
        return cls(result.st_size, result.st_mtime_ns, result.st_ctime_ns, result.st_ino)

    @property
    def last_change(self) -> float:
        """The latest of mtime and ctime (a rename into place changes ctime), in seconds."""
        return max(self.mtime_ns, self.ctime_ns) / 1e9


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


class SettleTracker:
    """A file is settled once its snapshot stayed the same over the settle window."""

    def __init__(self, settle_seconds: float) -> None:
        self.settle_seconds = settle_seconds
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
        return now_wall - stable_since >= self.settle_seconds

    def forget(self, path: Path) -> None:
        """Stop tracking a path (taken, or gone)."""
        self._seen.pop(path, None)
