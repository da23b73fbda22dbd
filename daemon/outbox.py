"""The outbox: names that mirror the inbox, atomic writes, error files and jobs.jsonl."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from pipeline.encode import (DEFAULT_X264_PRESET, check_thumbnail, check_video, start_video, write_preview,
                             write_thumbnail)
from pipeline.errors import GenerationError, VidropError
from pipeline.generate import GenerationResult, JobParams

TEMP_PREFIX = ".vidrop-tmp-"
JOBS_LOG = "jobs.jsonl"
ERROR_SUFFIX = ".error.json"
# Errors that say the outbox's disk or share is full or gone, not that the job is bad: wait, then go on.
UNAVAILABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.ENOENT, errno.EIO, errno.EACCES, errno.EPERM,
                      errno.ESTALE, errno.EROFS, errno.ENOTCONN, errno.EHOSTDOWN}
# Below this much free space a failed write is taken for a full disk, whatever the encoder said.
MIN_FREE_BYTES = 1 << 20


class OutboxUnavailable(VidropError):
    """The outbox cannot be written now (full disk, share gone): the job waits, it is not failed."""

    def __init__(self, code: int, path: Path, detail: str = "") -> None:
        name = errno.errorcode.get(code, str(code))
        reason = ("The outbox is full." if code in (errno.ENOSPC, errno.EDQUOT)
                  else f"The outbox cannot be written ({name}).")
        super().__init__(reason, detail=detail or f"{path}: {os.strerror(code)}",
                         fix="Free space on the outbox's disk, or mount the share again; vidrop goes on by itself.")
        self.code = code
        self.errno_name = name
        self.path = path


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

    def __init__(self, root: Path, owner: str | None = None, *, x264_preset: str = DEFAULT_X264_PRESET) -> None:
        self.root = root
        self.x264_preset = x264_preset
        # Temporary names carry the writer's token, so one instance never removes another's live writes.
        self.owner = owner or secrets.token_hex(4)

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
        targets = {"video": names.video(fmt), "thumbnail": names.thumbnail}
        preview = Path(source.get("preview", ""))
        if preview.is_file():  # results from before the gallery have none
            targets["preview"] = names.preview
        targets["manifest"] = names.manifest  # the manifest last: once it is there, the rest is complete
        temporaries = {name: self._temporary(names.folder, path.name) for name, path in targets.items()}
        try:
            with self._writing():
                names.folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(video, temporaries["video"])
                shutil.copyfile(thumbnail, temporaries["thumbnail"])
                if "preview" in targets:
                    shutil.copyfile(preview, temporaries["preview"])
                outputs = {name: path.name for name, path in targets.items()}
                _write_json(temporaries["manifest"], {**manifest, "outputs": outputs})
                for name in targets:
                    _fsync_path(temporaries[name])
                    os.replace(temporaries[name], targets[name])
                names.error.unlink(missing_ok=True)
        finally:
            for path in temporaries.values():
                path.unlink(missing_ok=True)
        return {name: str(path) for name, path in targets.items()}

    def check_available(self) -> None:
        """Raise OutboxUnavailable unless the outbox exists, has room, and takes a small write."""
        with self._writing():
            probe = self._temporary(self.root, "probe")
            try:
                _write_json(probe, {"probe": True})
            finally:
                probe.unlink(missing_ok=True)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn a failed write into OutboxUnavailable when the outbox is the reason.

        The outbox folder itself is never created here: a share that is not mounted must not be
        replaced by an empty folder on the local disk.
        """
        if not self.root.is_dir():
            raise OutboxUnavailable(errno.ENOENT, self.root)
        try:
            yield
        except OSError as exc:
            if exc.errno in UNAVAILABLE_ERRNOS:
                raise OutboxUnavailable(exc.errno, Path(exc.filename or self.root), str(exc)) from exc
            self._raise_if_unavailable(exc)
            raise
        except Exception as exc:  # an encoder dying on a full disk says so in its own words
            self._raise_if_unavailable(exc)
            raise

    def _raise_if_unavailable(self, exc: Exception) -> None:
        if not self.root.is_dir():
            raise OutboxUnavailable(errno.ENOENT, self.root, str(exc)) from exc
        try:
            stats = os.statvfs(self.root)
        except OSError as stat_error:
            raise OutboxUnavailable(stat_error.errno or errno.EIO, self.root, str(exc)) from exc
        free = stats.f_bavail * stats.f_frsize
        if free < MIN_FREE_BYTES:
            raise OutboxUnavailable(errno.ENOSPC, self.root, f"{free} bytes free; {type(exc).__name__}: {exc}") from exc

    def find_committed(self, names: OutputNames, job_id: str,
                       request: dict[str, Any] | None = None) -> dict[str, str] | None:
        """The outputs an earlier run of this job already renamed into place, if they are all there and sound.

        With request (the `input` block, `parameters` and `seed_was_random` its manifest would have), only
        if the manifest says they were made from the same bytes with the same parameters; a seed vidrop chose
        itself may differ (a job admitted again after the ledger was lost draws a new one).
        """
        try:
            manifest = json.loads(names.manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or manifest.get("job_id") != job_id or manifest.get("state") != "done":
            return None
        if request is not None and not _is_same_request(manifest, request):
            return None
        outputs = manifest.get("outputs") or {}
        video = manifest.get("video") or {}
        try:
            written = check_video(names.folder / outputs["video"], fmt=video["format"])
            check_thumbnail(names.folder / outputs["thumbnail"])
        except (KeyError, OSError, VidropError):
            return None
        if written.frames != video.get("frames"):
            return None
        return {name: str(names.folder / file_name) for name, file_name in outputs.items()}

    def has_job_line(self, names: OutputNames, job_id: str, state: str) -> bool:
        """Whether the folder's jobs.jsonl already tells of this job ending in this state."""
        try:
            lines = names.jobs_log.read_text(encoding="utf-8").splitlines()
        except OSError:
            return False
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut short by a power cut
            if entry.get("job_id") == job_id and entry.get("state") == state:
                return True
        return False

    def remove_stale_temporaries(self, *, live_owners: set[str] = frozenset()) -> list[Path]:
        """Delete temporary files left by writers that are gone (not ours, not a live owner's)."""
        return self._remove_temporaries(self.root, lambda owner, final: owner not in live_owners | {self.owner},
                                        recursive=True)

    def remove_job_temporaries(self, names: OutputNames) -> list[Path]:
        """Delete any writer's temporary files for these outputs: whoever wrote them lost the job's lease."""
        stem = f"{names.stem}."
        return self._remove_temporaries(names.folder, lambda owner, final: final.startswith(stem), recursive=False)

    def _remove_temporaries(self, top: Path, is_stale, *, recursive: bool) -> list[Path]:
        removed = []
        if not top.is_dir():
            return removed
        for folder, _dirs, files in os.walk(top):
            for name in files:
                if not name.startswith(TEMP_PREFIX):
                    continue
                owner, _random, final = (name[len(TEMP_PREFIX):].split("-", 2) + ["", ""])[:3]
                if is_stale(owner, final):
                    path = Path(folder) / name
                    path.unlink(missing_ok=True)
                    removed.append(path)
            if not recursive:
                break
        return removed

    def commit_success(self, *, names: OutputNames, result: GenerationResult, params: JobParams,
                       manifest: dict[str, Any]) -> dict[str, str]:
        """Write video, thumbnail and manifest under temporary names, check them, rename them into place."""
        video = names.video(params.format)
        video_tmp, thumb_tmp, preview_tmp, manifest_tmp = (
            self._temporary(names.folder, path.name) for path in (video, names.thumbnail, names.preview, names.manifest))
        try:
            with self._writing():
                outputs = self._write_outputs(names, result, params, manifest, video, video_tmp, thumb_tmp,
                                              preview_tmp, manifest_tmp)
        finally:
            for path in (video_tmp, thumb_tmp, preview_tmp, manifest_tmp):
                path.unlink(missing_ok=True)
        return outputs

    def _write_outputs(self, names: OutputNames, result: GenerationResult, params: JobParams,
                       manifest: dict[str, Any], video: Path, video_tmp: Path, thumb_tmp: Path,
                       preview_tmp: Path, manifest_tmp: Path) -> dict[str, str]:
        names.folder.mkdir(parents=True, exist_ok=True)
        # The thumbnail and the preview are made from the frames in memory while ffmpeg encodes the video.
        encoding = start_video(result.frames, video_tmp, fps=params.fps, fmt=params.format,
                               x264_preset=self.x264_preset)
        try:
            write_thumbnail(result.frames, thumb_tmp)
            check_thumbnail(thumb_tmp)
            write_preview(result.frames, preview_tmp, fps=params.fps)
            check_thumbnail(preview_tmp)
        except BaseException:
            encoding.abandon()
            raise
        encoding.finish()
        written = check_video(video_tmp, fmt=params.format)
        if written.frames != result.frames.shape[0]:
            raise GenerationError("The video file is missing frames.",
                                  detail=f"{video_tmp}: wrote {result.frames.shape[0]}, read back {written.frames}",
                                  fix="Try again; if it keeps happening, send the error file to the operator.")
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
        names.error.unlink(missing_ok=True)
        _fsync_path(names.folder)
        return {name: str(names.folder / file_name) for name, file_name in outputs.items()}

    def commit_failure(self, *, names: OutputNames, error_document: dict[str, Any]) -> Path:
        """Write `<stem>.error.json` atomically."""
        temporary = self._temporary(names.folder, names.error.name)
        try:
            with self._writing():
                names.folder.mkdir(parents=True, exist_ok=True)
                _write_json(temporary, error_document)
                os.replace(temporary, names.error)
        finally:
            temporary.unlink(missing_ok=True)
        return names.error

    def _temporary(self, folder: Path, final_name: str) -> Path:
        return _temporary(folder, final_name, self.owner)

    def append_job_line(self, names: OutputNames, line: dict[str, Any]) -> None:
        """Append one line to the folder's jobs.jsonl in a single write."""
        data = (json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        with self._writing():
            names.folder.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(names.jobs_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(descriptor, data)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def _is_same_request(manifest: dict[str, Any], request: dict[str, Any]) -> bool:
    expected = json.loads(json.dumps(request))  # as it would read back from a manifest (tuples become lists)
    made, wanted = dict(manifest.get("parameters") or {}), dict(expected["parameters"])
    if expected["seed_was_random"] and manifest.get("seed_was_random"):
        made.pop("seed", None)
        wanted.pop("seed", None)
    return manifest.get("input") == expected["input"] and made == wanted


def replace_text(path: Path, text: str) -> None:
    """Write a small regenerable file (a page, a status file) under a temporary name, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(path.parent, path.name)
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _temporary(folder: Path, final_name: str, owner: str = "page") -> Path:
    """A temporary name in the final file's folder: the prefix marks it as ours, owner as whose."""
    return folder / f"{TEMP_PREFIX}{owner}-{secrets.token_hex(4)}-{final_name}"


def iso_time(timestamp: float) -> str:
    """A UTC ISO-8601 timestamp."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="milliseconds")




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
