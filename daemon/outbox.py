"""The outbox: names that mirror the inbox, atomic writes, error files and jobs.jsonl."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.encode import check_thumbnail, check_video, write_preview, write_thumbnail, write_video
from pipeline.errors import GenerationError
from pipeline.generate import GenerationResult, JobParams

TEMP_PREFIX = ".vidrop-tmp-"
JOBS_LOG = "jobs.jsonl"
ERROR_SUFFIX = ".error.json"


@dataclass(frozen=True)
class OutputNames:
    """Where one input's results go: `inbox/a/b/photo.png` → `outbox/a/b/photo.*`."""

    folder: Path
    stem: str

    def video(self, fmt: str) -> Path:
        return self.folder / f"{self.stem}.{fmt}"

    @property
    def thumbnail(self) -> Path:
        return self.folder / f"{self.stem}.jpg"

    @property
    def preview(self) -> Path:
        return self.folder / f"{self.stem}.preview.webp"

    @property
    def manifest(self) -> Path:
        return self.folder / f"{self.stem}.json"

    @property
    def error(self) -> Path:
        return self.folder / f"{self.stem}{ERROR_SUFFIX}"

    @property
    def jobs_log(self) -> Path:
        return self.folder / JOBS_LOG


class Outbox:
    """Writes results so that nobody on the share ever sees a half-written file."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def names_for(self, relative_input: str) -> OutputNames:
        """Output names for an input path relative to the inbox; never outside the outbox."""
        relative = PurePosixPath(relative_input)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"input path {relative_input!r} is not inside the inbox")
        folder = self.root.joinpath(*relative.parent.parts)
        return OutputNames(folder=folder, stem=relative.stem)

    def names_for_output(self, output: str) -> OutputNames:
        """Output names for an output stem relative to the outbox ("a/b/photo" or "a/b/photo_jpg")."""
        relative = PurePosixPath(output)
        if relative.is_absolute() or ".." in relative.parts or not relative.name:
            raise ValueError(f"output {output!r} is not inside the outbox")
        return OutputNames(folder=self.root.joinpath(*relative.parent.parts), stem=relative.name)

    def copy_results(self, *, source: dict[str, str], names: OutputNames, fmt: str,
                     manifest: dict[str, Any]) -> dict[str, str] | None:
        """Copy another job's video and thumbnail under these names, with this manifest; None if they are gone."""
        video, thumbnail = Path(source.get("video", "")), Path(source.get("thumbnail", ""))
        if not (video.is_file() and thumbnail.is_file()):
            return None
        names.folder.mkdir(parents=True, exist_ok=True)
        targets = {"video": names.video(fmt), "thumbnail": names.thumbnail}
        preview = Path(source.get("preview", ""))
        if preview.is_file():  # results from before the gallery have none
            targets["preview"] = names.preview
        targets["manifest"] = names.manifest  # the manifest last: once it is there, the rest is complete
        temporaries = {name: _temporary(names.folder, path.name) for name, path in targets.items()}
        try:
            shutil.copyfile(video, temporaries["video"])
            shutil.copyfile(thumbnail, temporaries["thumbnail"])
            if "preview" in targets:
                shutil.copyfile(preview, temporaries["preview"])
            outputs = {name: path.name for name, path in targets.items()}
            _write_json(temporaries["manifest"], {**manifest, "outputs": outputs})
            for name in targets:
                _fsync_path(temporaries[name])
                os.replace(temporaries[name], targets[name])
        finally:
            for path in temporaries.values():
                path.unlink(missing_ok=True)
        names.error.unlink(missing_ok=True)
        return {name: str(path) for name, path in targets.items()}

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temporary files left by a process that died mid-write; return what was removed."""
        removed = []
        if not self.root.is_dir():
            return removed
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(TEMP_PREFIX):
                    path = Path(folder) / name
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    def commit_success(self, *, names: OutputNames, result: GenerationResult, params: JobParams,
                       manifest: dict[str, Any]) -> dict[str, str]:
        """Write video, thumbnail and manifest under temporary names, check them, rename them into place."""
        names.folder.mkdir(parents=True, exist_ok=True)
        video = names.video(params.format)
        video_tmp, thumb_tmp, preview_tmp, manifest_tmp = (
            _temporary(names.folder, path.name) for path in (video, names.thumbnail, names.preview, names.manifest))
        try:
            write_video(result.frames, video_tmp, fps=params.fps, fmt=params.format)
            written = check_video(video_tmp, fmt=params.format)
            if written.frames != result.frames.shape[0]:
                raise GenerationError("The video file is missing frames.",
                                      detail=f"{video_tmp}: wrote {result.frames.shape[0]}, read back {written.frames}",
                                      fix="Try again; if it keeps happening, send the error file to the operator.")
            write_thumbnail(result.frames, thumb_tmp)
            check_thumbnail(thumb_tmp)
            write_preview(result.frames, preview_tmp, fps=params.fps)
            check_thumbnail(preview_tmp)
            outputs = {"video": video.name, "thumbnail": names.thumbnail.name, "preview": names.preview.name,
                       "manifest": names.manifest.name}
            manifest = {**manifest, "outputs": outputs,
                        "video": {"frames": written.frames, "width": written.width, "height": written.height,
                                  "fps": params.fps, "format": params.format}}
            _write_json(manifest_tmp, manifest)
            _fsync_path(video_tmp)
            _fsync_path(thumb_tmp)
            _fsync_path(preview_tmp)
            # The manifest goes last: once it is there, the video and thumbnail it names are complete.
            os.replace(video_tmp, video)
            os.replace(thumb_tmp, names.thumbnail)
            os.replace(preview_tmp, names.preview)
            os.replace(manifest_tmp, names.manifest)
        finally:
            for path in (video_tmp, thumb_tmp, preview_tmp, manifest_tmp):
                path.unlink(missing_ok=True)
        names.error.unlink(missing_ok=True)
        _fsync_path(names.folder)
        return {name: str(names.folder / file_name) for name, file_name in outputs.items()}

    def commit_failure(self, *, names: OutputNames, error_document: dict[str, Any]) -> Path:
        """Write `<stem>.error.json` atomically."""
        names.folder.mkdir(parents=True, exist_ok=True)
        temporary = _temporary(names.folder, names.error.name)
        try:
            _write_json(temporary, error_document)
            os.replace(temporary, names.error)
        finally:
            temporary.unlink(missing_ok=True)
        return names.error

    def append_job_line(self, names: OutputNames, line: dict[str, Any]) -> None:
        """Append one line to the folder's jobs.jsonl in a single write."""
        names.folder.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        descriptor = os.open(names.jobs_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, data)
        finally:
            os.close(descriptor)


def replace_text(path: Path, text: str) -> None:
    """Write a small regenerable file (a page, a status file) under a temporary name, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(path.parent, path.name)
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def iso_time(timestamp: float) -> str:
    """A UTC ISO-8601 timestamp."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="milliseconds")


def _temporary(folder: Path, final_name: str) -> Path:
    return folder / f"{TEMP_PREFIX}{secrets.token_hex(4)}-{final_name}"


def _write_json(path: Path, document: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: so the renames in it survive a power cut)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
