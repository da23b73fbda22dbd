"""The reconcile scan: every image in the inbox tree, junk and links left out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from daemon.intake.readiness import is_image_name, is_junk


def scan_images(inbox: Path) -> Iterator[Path]:
    """Yield every image file under the inbox, never following links and skipping junk folders and files."""
    stack = [inbox]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if is_junk(entry.name):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False) and is_image_name(entry.name):
                        yield Path(entry.path)
        except OSError:
            continue
