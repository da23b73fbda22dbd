"""What happens to an input after its job: keep it, move it to a done/failed folder, or delete it."""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from config.settings import Settings
from daemon.ledger.base import Job, JobState
from daemon.names import NAME_MAX, fit_stem, name_bytes

log = structlog.get_logger()


class InputDisposal:
    """A JobListener applying intake.on_success / on_failure. Never deletes anything on failure."""

    def __init__(self, settings: Settings) -> None:
        self.inbox = settings.inbox
        self.intake = settings.intake

    def job_changed(self, job: Job, state: JobState, details: dict[str, Any]) -> None:
        if state is JobState.DONE and self.intake.on_success != "keep":
            self._dispose(job, self.intake.on_success, self.intake.done_dir)
        elif state is JobState.FAILED and self.intake.on_failure == "move":
            self._dispose(job, "move", self.intake.failed_dir)

    def _dispose(self, job: Job, action: str, target_root: Path) -> None:
        paths = [job.input] + ([job.sidecar] if job.sidecar and not self._is_shared(job) else [])
        for relative in paths:
            source = self.inbox.joinpath(*PurePosixPath(relative).parts)
            if not source.is_file():
                continue
            if action == "delete":
                source.unlink()
                log.info("input_deleted", job_id=job.id, input=relative)
                continue
            target = target_root.joinpath(*PurePosixPath(relative).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():  # keep both; the job id makes the name unique, shortened to fit if need be
                tail = f".{job.id}{target.suffix}"
                target = target.with_name(f"{fit_stem(target.stem, NAME_MAX - len(name_bytes(tail)))}{tail}")
            try:
                os.replace(source, target)
            except OSError:  # another filesystem: copy, then remove
                shutil.copy2(source, target)
                source.unlink()
            log.info("input_moved", job_id=job.id, input=relative, to=str(target))

    def _is_shared(self, job: Job) -> bool:
        """Whether another image still in the folder uses the same sidecar (a.png and a.jpg share a.json)."""
        image = self.inbox.joinpath(*PurePosixPath(job.input).parts)
        return any(p.stem == image.stem and p != image for p in image.parent.glob(f"{glob.escape(image.stem)}.*")
                   if p.suffix.lower() != ".json")
