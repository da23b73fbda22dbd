"""When is a dropped file a real, complete input: junk names, the settle window, busy markers, open writers."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from vidrop.daemon.outbox import TEMP_PREFIX
from vidrop.pipeline.images import IMAGE_SUFFIXES, Unfinished, find_unfinished

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
    """A file is settled once its snapshot stayed the same over the settle window, by our own observation.

    File times are never compared with the local clock: they come from the producer's or the file
    server's clock (a camera hours ahead, `rsync -a` keeping a source's times, a server running behind),
    so a window is measured in monotonic time from the moment we first saw the file as it is now. A file
    that sat in the inbox while the daemon was down waits one window after the start, and no more.
    """

    def __init__(self, settle_seconds: float, *, reopen: bool = False) -> None:
        self.settle_seconds = settle_seconds
        self.reopen = reopen
        self._seen: dict[Path, tuple[FileSnapshot, float]] = {}
        self._parked: dict[Path, tuple[FileSnapshot, float]] = {}

    def is_settled(self, path: Path, now: float) -> bool:
        """Stat the file; True when we have seen it unchanged for settle_seconds (now: monotonic)."""
        snapshot = FileSnapshot.of(path)
        if snapshot is None:
            self._seen.pop(path, None)
            return False
        if self.stable_for(path, snapshot, now) < self.settle_seconds:
            return False
        if self.reopen and FileSnapshot.after_open(path) != snapshot:
            self._seen.pop(path, None)
            return False
        return not is_finder_busy(path)

    def stable_for(self, path: Path, snapshot: FileSnapshot, now: float) -> float:
        """Seconds we have seen the file with this snapshot (0 the first time, or when it changed)."""
        previous = self._seen.get(path)
        if previous is None or previous[0] != snapshot:
            self._seen[path] = (snapshot, now)
            return 0.0
        self._seen[path] = previous
        return now - previous[1]

    def park(self, path: Path) -> None:
        """Stop tracking a path handed out, but keep what was seen until `drop_parked`: a file handed back
        with `unpark` (it did not decode yet) keeps the time it has been stable."""
        entry = self._seen.pop(path, None)
        if entry is not None:
            self._parked[path] = entry

    def unpark(self, path: Path) -> None:
        """Track a parked path again, from what was seen of it before."""
        entry = self._parked.pop(path, None)
        if entry is not None:
            self._seen.setdefault(path, entry)

    def drop_parked(self) -> None:
        """Forget what `park` kept and nobody handed back (those inputs were admitted)."""
        self._parked.clear()

    def forget(self, path: Path) -> None:
        """Stop tracking a path (taken, or gone)."""
        self._seen.pop(path, None)


class OpenWriters:
    """Which files some process holds open for writing, from /proc (Linux): smbd holds a file open while
    an SMB client writes it, as do cp, rsync --inplace and most copy tools.

    Only processes this one may inspect are seen (all of them as root); elsewhere nothing is known and
    the settle window and the file's own structure decide. One /proc walk serves every candidate of a tick.
    Descriptors are matched by the path their link names (readlink never touches the file: a stat
    through it could hang on another process's dead NFS mount); the inbox is resolved, so is that path.
    """

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        self._open: dict[str, list[tuple[str, str]]] | None = None

    def refresh(self) -> None:
        """Forget the last walk: the next question walks /proc again."""
        self._open = None

    def writer_of(self, path: Path) -> str | None:
        """`name (pid N)` of a process that has the file open for writing, or None."""
        if self._open is None:
            self._open = self._walk()
        for pid, fd in self._open.get(str(path), ()):
            if self._is_writable(pid, fd):
                return f"{self._command(pid)} (pid {pid})"
        return None

    def _walk(self) -> dict[str, list[tuple[str, str]]]:
        found: dict[str, list[tuple[str, str]]] = {}
        me = str(os.getpid())
        try:
            processes = [name for name in os.listdir(self.proc) if name.isdigit() and name != me]
        except OSError:
            return found
        for pid in processes:
            try:
                with os.scandir(f"{self.proc}/{pid}/fd") as entries:
                    for entry in entries:
                        try:
                            target = os.readlink(entry.path)
                        except OSError:
                            continue
                        if target.startswith("/"):  # not a socket:[…], pipe:[…] or anon_inode
                            found.setdefault(target, []).append((pid, entry.name))
            except OSError:  # gone, or not ours to look at
                continue
        return found

    def _is_writable(self, pid: str, fd: str) -> bool:
        try:
            with open(f"{self.proc}/{pid}/fdinfo/{fd}", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("flags:"):
                        return int(line.split()[1], 8) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        except (OSError, ValueError):
            pass
        return False

    def _command(self, pid: str) -> str:
        try:
            return Path(f"{self.proc}/{pid}/comm").read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return "a process"


def find_unfinished_file(path: Path, *, max_bytes: int) -> Unfinished | None:
    """Signs in the file's own bytes that it is still being filled in (see `find_unfinished`).

    A file over max_bytes is not read: admission refuses it for its size anyway.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError:
        return None
    if len(data) > max_bytes:
        return None
    if is_sidecar_name(path.name):
        return _unfinished_json(data)
    return find_unfinished(data)


def _unfinished_json(data: bytes) -> Unfinished | None:
    try:
        json.loads(data)
    except ValueError as exc:  # also UnicodeDecodeError: a half-written UTF-8 sequence
        # Not certain: after the grace the admission refuses it for what it is, invalid JSON.
        return Unfinished(f"the prompt file is not complete JSON yet ({exc})", is_certain=False)
    return None
