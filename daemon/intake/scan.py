"""The reconcile scan: images and sidecars in the inbox tree, junk and links left out.

Incremental scans list only folders whose mtime changed (a folder's mtime moves when an entry is
added, removed or renamed in it); a full scan lists everything, for what mtimes cannot show.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vidrop.daemon.intake.readiness import IMAGE, StatValues, is_input_name, stat_values


class InboxUnavailable(OSError):
    """The inbox root cannot be read: an unmounted share, EIO, ESTALE, a deleted folder."""


@dataclass(frozen=True)
class Listing:
    """One folder's images and sidecars, each name with its stat values (`FileSnapshot.values`)."""

    folder: str  # absolute, a plain string
    images: dict[str, StatValues]
    sidecars: dict[str, StatValues]


@dataclass
class ScanResult:
    """The folders one scan listed, and those it could not list (what is in them is unknown, not gone)."""

    listed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)


class InboxScanner:
    """Walks the inbox with os.scandir, remembering folder mtimes between scans.

    Each listed folder goes to `visit` at once, so a scan of 100,000 files never holds them all; names stay
    strings and each file costs one fstatat: at that size a Path per entry would be most of a scan.
    """

    def __init__(self, inbox: Path, is_junk: Callable[[str], bool]) -> None:
        self.inbox = inbox
        self.is_junk = is_junk
        self._folders: dict[str, _Folder] = {}

    def scan(self, *, full: bool, visit: Callable[[Listing], None]) -> ScanResult:
        """List the folders that changed since the last scan (every folder when full), each to visit."""
        try:
            os.stat(self.inbox)
            os.listdir(self.inbox)
        except OSError as exc:
            raise InboxUnavailable(exc.errno, exc.strerror, str(self.inbox)) from None
        result = ScanResult()
        seen: dict[str, _Folder] = {}
        stack = [str(self.inbox)]
        while stack:
            folder = stack.pop()
            try:
                mtime_ns = os.stat(folder, follow_symlinks=False).st_mtime_ns
            except OSError:
                continue
            known = self._folders.get(folder)
            if known is not None and known.mtime_ns == mtime_ns and not full:
                seen[folder] = known
                stack.extend(known.subfolders)
                continue
            listed = self._list(folder)
            if listed is None:
                result.failed.add(folder)
                continue
            listing, subfolders = listed
            result.listed.add(folder)
            visit(listing)
            seen[folder] = _Folder(mtime_ns, tuple(subfolders))
            stack.extend(subfolders)
        self._folders = seen
        return result

    def forget(self) -> None:
        """Drop the folder cache: the next scan lists everything."""
        self._folders = {}

    def _list(self, folder: str) -> tuple[Listing, list[str]] | None:
        images: dict[str, StatValues] = {}
        sidecars: dict[str, StatValues] = {}
        subfolders = []
        is_junk = self.is_junk
        try:
            descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            with os.scandir(descriptor) as entries:  # by descriptor: entry.stat() is an fstatat, no path walk
                for entry in entries:
                    name = entry.name
                    if is_junk(name):
                        continue
                    kind = is_input_name(name)
                    if kind is None:
                        if entry.is_dir(follow_symlinks=False):
                            subfolders.append(f"{folder}/{name}")
                        continue
                    result = entry.stat(follow_symlinks=False)
                    if not stat.S_ISREG(result.st_mode):
                        if stat.S_ISDIR(result.st_mode):
                            subfolders.append(f"{folder}/{name}")
                        continue
                    (images if kind is IMAGE else sidecars)[name] = stat_values(result)
        except OSError:
            return None
        finally:
            os.close(descriptor)
        return Listing(folder, images, sidecars), subfolders


@dataclass(frozen=True)
class _Folder:
    mtime_ns: int
    subfolders: tuple[str, ...]
