"""The outbox: names that mirror the inbox, atomic writes, error files and jobs.jsonl."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from vidrop.config.errors import TRY_AGAIN_FIX, GenerationError, VidropError
from vidrop.config.request import VIDEO_FORMATS
from vidrop.daemon.names import NAME_MAX, fit_stem, json_text, name_bytes, restored
from vidrop.pipeline.encode import (
    DEFAULT_X264_PRESET,
    VideoCheck,
    check_thumbnail,
    check_video,
    start_video,
    write_preview,
    write_thumbnail,
)
from vidrop.pipeline.generate import GenerationResult, JobParams
from vidrop.pipeline.images import IMAGE_SUFFIXES

TEMP_PREFIX = ".vidrop-tmp-"
JOBS_LOG = "jobs.jsonl"
ERROR_SUFFIX = ".error.json"
PREVIEW_SUFFIX = ".preview.webp"
GALLERY_STATUS = "_status.json"  # the gallery's, in every outbox folder
_TOKEN_CHARS = 8  # an owner token and a temporary's random part: 4 bytes as hex
# The longest name an output stem gets: its longest ending inside its longest temporary name. A stem
# beyond this is shortened (`fit_stem`), so no name vidrop writes exceeds the filesystem's 255 bytes.
STEM_MAX_BYTES = NAME_MAX - len(TEMP_PREFIX) - 2 * (_TOKEN_CHARS + 1) - len(PREVIEW_SUFFIX)
# Input stems that would name one of vidrop's own files (`x.error` → x.error.json, x's error file;
# `x.preview` → x.preview.webp; `_status` → _status.json), or end like a name vidrop derives itself
# (`look_png`, for look.png beside look.jpg): such a stem gets its extension too (`field.error_png`).
OUTPUT_LIKE_ENDINGS = (".error", ".preview")
OUTPUT_LIKE_STEMS = (GALLERY_STATUS.removesuffix(".json"),)
# Errors that say the outbox's disk or share is full or gone, not that the job is bad: wait, then go on.
UNAVAILABLE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.ENOENT,
    errno.EIO,
    errno.EACCES,
    errno.EPERM,
    errno.ESTALE,
    errno.EROFS,
    errno.ENOTCONN,
    errno.EHOSTDOWN,
}
# Below this much free space a failed write is taken for a full disk, whatever the encoder said.
MIN_FREE_BYTES = 1 << 20


class OutboxUnavailable(VidropError):
    """The outbox cannot be written now (full disk, share gone): the job waits, it is not failed."""

    def __init__(self, code: int, path: Path, detail: str = "") -> None:
        name = errno.errorcode.get(code, str(code))
        reason = (
            "The outbox is full." if code in (errno.ENOSPC, errno.EDQUOT) else f"The outbox cannot be written ({name})."
        )
        super().__init__(
            reason,
            detail=detail or f"{path}: {os.strerror(code)}",
            fix="Free space on the outbox's disk, or mount the share again; vidrop goes on by itself.",
        )
        self.code = code
        self.errno_name = name
        self.path = path


@dataclass(frozen=True)
class OutputNames:
    """Where one input's results go: `inbox/a/b/photo.png` → `outbox/a/b/photo.*`.

    A stem longer than STEM_MAX_BYTES is shortened here, so every way of naming outputs gets names that fit.
    """

    folder: Path
    stem: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "stem", fit_stem(self.stem, STEM_MAX_BYTES))

    def video(self, fmt: str) -> Path:
        return self.folder / f"{self.stem}.{fmt}"

    @property
    def thumbnail(self) -> Path:
        return self.folder / f"{self.stem}.jpg"

    @property
    def preview(self) -> Path:
        return self.folder / f"{self.stem}{PREVIEW_SUFFIX}"

    @property
    def manifest(self) -> Path:
        return self.folder / f"{self.stem}.json"

    @property
    def error(self) -> Path:
        return self.folder / f"{self.stem}{ERROR_SUFFIX}"

    @property
    def jobs_log(self) -> Path:
        return self.folder / JOBS_LOG

    @property
    def file_names(self) -> frozenset[str]:
        """Every name these outputs may have in their folder (any video format)."""
        return frozenset(
            {
                *(self.video(fmt).name for fmt in VIDEO_FORMATS),
                self.thumbnail.name,
                self.preview.name,
                self.manifest.name,
                self.error.name,
            }
        )


def is_output_like(stem: str) -> bool:
    """Whether an input's own stem would name another input's or the gallery's file (see OUTPUT_LIKE_ENDINGS)."""
    lowered = stem.lower()
    derived = tuple(f"_{suffix.lstrip('.')}" for suffix in (*IMAGE_SUFFIXES, ".json"))
    return lowered in OUTPUT_LIKE_STEMS or lowered.endswith(OUTPUT_LIKE_ENDINGS + derived)


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

    def copy_results(
        self, *, source: dict[str, str], names: OutputNames, fmt: str, manifest: dict[str, Any]
    ) -> dict[str, str] | None:
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

    def find_committed(
        self, names: OutputNames, job_id: str, request: dict[str, Any] | None = None
    ) -> dict[str, str] | None:
        """The outputs an earlier run of this job already renamed into place, if they are all there and sound.

        With request (the `input` block, `parameters` and `seed_was_random` its manifest would have), only
        if the manifest says they were made from the same bytes with the same parameters; a seed vidrop chose
        itself may differ (a job admitted again after the ledger was lost draws a new one).
        """
        try:
            manifest = restored(json.loads(names.manifest.read_bytes()))
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
        if (written.audio and written.audio.samples) != ((manifest.get("audio") or {}).get("samples")):
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
        return self._remove_temporaries(
            self.root, lambda owner, final: owner not in live_owners | {self.owner}, recursive=True
        )

    def remove_job_temporaries(self, names: OutputNames) -> list[Path]:
        """Delete any writer's temporary files for these outputs: whoever wrote them lost the job's lease."""
        finals = names.file_names  # exactly these: another job's stem may start with this one's (`x`, `x.y`)
        return self._remove_temporaries(names.folder, lambda owner, final: final in finals, recursive=False)

    def _remove_temporaries(self, top: Path, is_stale, *, recursive: bool) -> list[Path]:
        removed = []
        if not top.is_dir():
            return removed
        for folder, _dirs, files in os.walk(top):
            for name in files:
                if not name.startswith(TEMP_PREFIX):
                    continue
                owner, _random, final = (name[len(TEMP_PREFIX) :].split("-", 2) + ["", ""])[:3]
                if is_stale(owner, final):
                    path = Path(folder) / name
                    path.unlink(missing_ok=True)
                    removed.append(path)
            if not recursive:
                break
        return removed

    def commit_success(
        self,
        *,
        names: OutputNames,
        result: GenerationResult,
        params: JobParams,
        manifest: dict[str, Any],
        before_rename: Callable[[], None] | None = None,
        timings: dict[str, float] | None = None,
    ) -> dict[str, str]:
        """Write video, thumbnail and manifest under temporary names, check them, rename them into place.

        before_rename runs once all is written and checked, right before the first rename; whatever it raises
        (a lost lease) leaves the final names untouched. timings, if given, gets `encode_seconds`: the video
        encoded (with the thumbnail and preview beside it) and read back; the rest is writing.
        """
        video = names.video(params.format)
        video_tmp, thumb_tmp, preview_tmp, manifest_tmp = (
            self._temporary(names.folder, path.name) for path in (video, names.thumbnail, names.preview, names.manifest)
        )
        try:
            with self._writing():
                outputs = self._write_outputs(
                    names,
                    result,
                    params,
                    manifest,
                    video,
                    video_tmp,
                    thumb_tmp,
                    preview_tmp,
                    manifest_tmp,
                    before_rename,
                    {} if timings is None else timings,
                )
        finally:
            for path in (video_tmp, thumb_tmp, preview_tmp, manifest_tmp):
                path.unlink(missing_ok=True)
        return outputs

    def _write_outputs(
        self,
        names: OutputNames,
        result: GenerationResult,
        params: JobParams,
        manifest: dict[str, Any],
        video: Path,
        video_tmp: Path,
        thumb_tmp: Path,
        preview_tmp: Path,
        manifest_tmp: Path,
        before_rename: Callable[[], None] | None,
        timings: dict[str, float],
    ) -> dict[str, str]:
        encode_started = time.monotonic()
        names.folder.mkdir(parents=True, exist_ok=True)
        # The thumbnail and the preview are made from the frames in memory while ffmpeg encodes the video.
        encoding = start_video(
            result.frames,
            video_tmp,
            fps=params.fps,
            fmt=params.format,
            x264_preset=self.x264_preset,
            sound=result.sound,
        )
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
            raise GenerationError(
                "The video file is missing frames.",
                detail=f"{video_tmp}: wrote {result.frames.shape[0]}, read back {written.frames}",
                fix=TRY_AGAIN_FIX,
            )
        check_sound(written, result, params.fps, video_tmp)
        timings["encode_seconds"] = time.monotonic() - encode_started
        outputs = {
            "video": video.name,
            "thumbnail": names.thumbnail.name,
            "preview": names.preview.name,
            "manifest": names.manifest.name,
        }
        manifest = {
            **manifest,
            "outputs": outputs,
            "video": {
                "frames": written.frames,
                "width": written.width,
                "height": written.height,
                "fps": params.fps,
                "format": params.format,
            },
            "audio": _sound_facts(written, result),
        }
        _write_json(manifest_tmp, manifest)
        _fsync_path(video_tmp)
        _fsync_path(thumb_tmp)
        _fsync_path(preview_tmp)
        if before_rename is not None:
            before_rename()
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
        data = (json_text(line, sort_keys=True) + "\n").encode("utf-8")
        with self._writing():
            names.folder.mkdir(parents=True, exist_ok=True)
            # 0o666: the umask decides (UMask=0002 in the unit: group-writable for the share's group)
            descriptor = os.open(names.jobs_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(descriptor, data)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def _sound_facts(written: VideoCheck, result: GenerationResult) -> dict[str, Any] | None:
    """The manifest's `audio`: the sound track as read back (codec, rate, channels, samples, seconds) and what the
    model made before it was fitted to the video; None: a silent video."""
    if written.audio is None or result.sound is None:
        return None
    return {**written.audio.to_dict(), "generated_samples": result.sound.generated_samples}


def check_sound(written: VideoCheck, result: GenerationResult, fps: int, path: Path) -> None:
    """The written MP4 holds the sound track it was given, every sample of it, as long as its video (within a
    frame); and none where it was given none."""
    sound, audio = result.sound, written.audio
    problem = None
    if sound is None:
        problem = None if audio is None else f"a sound track of {audio.samples} samples nobody asked for"
    elif audio is None:
        problem = f"no sound track; {sound.sample_count} samples at {sound.sample_rate} Hz were written"
    elif (audio.samples, audio.sample_rate, audio.channels) != (sound.sample_count, sound.sample_rate, sound.channels):
        problem = (
            f"the sound track holds {audio.samples} samples at {audio.sample_rate} Hz in {audio.channels} channels; "
            f"{sound.sample_count} at {sound.sample_rate} Hz in {sound.channels} were written"
        )
    elif abs(audio.duration_seconds - (written.duration_seconds or 0.0)) > 1 / fps:
        problem = f"the sound lasts {audio.duration_seconds:.3f} s and the video {written.duration_seconds:.3f} s"
    if problem is not None:
        raise GenerationError("The video's sound track came out wrong.", detail=f"{path}: {problem}", fix=TRY_AGAIN_FIX)


def _is_same_request(manifest: dict[str, Any], request: dict[str, Any]) -> bool:
    expected = json.loads(json.dumps(request))  # as it would read back from a manifest (tuples become lists)
    made, wanted = dict(manifest.get("parameters") or {}), dict(expected["parameters"])
    made.setdefault("audio", False)  # written before the field existed: a video without sound
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
    """A temporary name in the final file's folder: the prefix marks it as ours, owner as whose.

    Output stems are kept short enough for this to fit (STEM_MAX_BYTES); an owner token longer than usual
    shortens the final name's part instead of making a name the filesystem refuses.
    """
    head = f"{TEMP_PREFIX}{owner}-{secrets.token_hex(_TOKEN_CHARS // 2)}-"
    room = NAME_MAX - len(name_bytes(head))
    if len(name_bytes(final_name)) > room:
        final_name = fit_stem(final_name, room)
    return folder / f"{head}{final_name}"


def iso_time(timestamp: float) -> str:
    """A UTC ISO-8601 timestamp."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="milliseconds")


def _write_json(path: Path, document: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json_text(document, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: so the renames in it survive a power cut)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
