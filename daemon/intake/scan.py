"""The reconcile scan: images and sidecars in the inbox tree, junk and links left out.

Incremental scans list only folders whose mtime changed (a folder's mtime moves when an entry is
added, removed or renamed in it); a full scan lists everything, for what mtimes cannot show.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from daemon.intake.readiness import is_image_name, is_sidecar_name


class InboxUnavailable(OSError):
    """The inbox root cannot be read: an unmounted share, EIO, ESTALE, a deleted folder."""


@dataclass(frozen=True)
class _Folder:
    mtime_ns: int
    subfolders: tuple[Path, ...]


class InboxScanner:
    """Walks the inbox with os.scandir, remembering folder mtimes between scans."""

    def __init__(self, inbox: Path, is_junk: Callable[[str], bool]) -> None:
        self.inbox = inbox
        self.is_junk = is_junk
        self._folders: dict[Path, _Folder] = {}

    def scan(self, *, full: bool) -> list[Path]:
        """Images and sidecars in folders that changed since the last scan (every folder when full)."""
        try:
            os.stat(self.inbox)
            os.listdir(self.inbox)
        except OSError as exc:
            raise InboxUnavailable(exc.errno, exc.strerror, str(self.inbox)) from None
        found: list[Path] = []
        seen: dict[Path, _Folder] = {}
        stack = [self.inbox]
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
            subfolders = self._list(folder, found)
            seen[folder] = _Folder(mtime_ns, tuple(subfolders))
            stack.extend(subfolders)
        self._folders = seen
        return found

    def forget(self) -> None:
        """Drop the folder cache: the next scan lists everything."""
        self._folders = {}

    def _list(self, folder: Path, found: list[Path]) -> list[Path]:
        subfolders = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if self.is_junk(entry.name):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        subfolders.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False) and (is_image_name(entry.name)
                                                                   or is_sidecar_name(entry.name)):
                        found.append(Path(entry.path))
        except OSError:
            pass
        return subfolders
