"""A job's input between admission and disposal: the bytes it was made from, where it moved, when it is disposed of."""

import hashlib
import json
import os

from vidrop.config.settings import IntakeSettings, Settings
from vidrop.daemon.inputs import InputDisposal, find_moved, read_input
from vidrop.daemon.ledger.base import Job, JobState
from vidrop.daemon.recorder import intact_manifest


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def job(key: str, input: str = "a/shot.png", state: JobState = JobState.QUEUED, image=b"image", side=b"{}") -> Job:
    return Job(
        id=key,
        key=key,
        input=input,
        sidecar=input.rsplit(".", 1)[0] + ".json",
        input_sha256=sha(image),
        sidecar_sha256=sha(side),
        params={"prompt": "x"},
        seed=1,
        state=state,
        output=input.rsplit(".", 1)[0],
    )


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class Siblings:
    def __init__(self, *jobs: Job) -> None:
        self.jobs = list(jobs)

    def jobs_for_input(self, relative_input: str) -> list[Job]:
        return [job for job in self.jobs if job.input == relative_input]


def disposal(tmp_path, ledger, **intake) -> InputDisposal:
    settings = Settings(
        inbox=tmp_path / "inbox",
        intake=IntakeSettings(done_dir=tmp_path / "done", failed_dir=tmp_path / "failed", **intake),
    )
    return InputDisposal(settings, ledger)


def test_the_input_is_moved_only_after_its_last_job_and_to_failed_if_any_failed(tmp_path):
    inbox = tmp_path / "inbox"
    write(inbox / "a" / "shot.png", b"image")
    write(inbox / "a" / "shot.json", b"{}")
    first, second = job("k1", state=JobState.DONE), job("k2")
    ledger = Siblings(first, second)
    listener = disposal(tmp_path, ledger, on_success="move", on_failure="move")
    listener.job_changed(first, JobState.DONE, {})
    assert (inbox / "a" / "shot.png").exists()  # the second variant still needs it
    second.state = JobState.FAILED
    listener.job_changed(second, JobState.FAILED, {})
    assert sorted(p.name for p in (tmp_path / "failed" / "a").iterdir()) == ["shot.json", "shot.png"]


def test_while_held_nothing_is_decided_until_every_job_of_the_input_is_stored(tmp_path):
    inbox = tmp_path / "inbox"
    write(inbox / "a" / "shot.png", b"image")
    refused = job("k1", state=JobState.FAILED)
    ledger = Siblings(refused)
    listener = disposal(tmp_path, ledger, on_failure="move")
    with listener.held():
        listener.job_changed(refused, JobState.FAILED, {})
        ledger.jobs.append(job("k2"))  # stored after the refusal: the input must wait for it
    assert (inbox / "a" / "shot.png").exists()


def test_a_file_changed_since_it_was_taken_is_never_deleted(tmp_path):
    inbox = tmp_path / "inbox"
    write(inbox / "a" / "shot.png", b"re-exported")
    done = job("k1", state=JobState.DONE)
    disposal(tmp_path, Siblings(done), on_success="delete").job_changed(done, JobState.DONE, {})
    assert (inbox / "a" / "shot.png").read_bytes() == b"re-exported"


def test_a_moved_input_is_found_by_its_hashes_renamed_or_in_a_renamed_folder(tmp_path):
    inbox = tmp_path / "inbox"
    queued = job("k1", input="spring/hero/shot.png")
    write(inbox / "spring-final" / "hero" / "shot.png", b"image")
    write(inbox / "spring-final" / "hero" / "shot.json", b"{}")
    write(inbox / "other" / "hero" / "shot.png", b"other bytes")
    moved = find_moved(inbox, queued)
    assert (moved.input, moved.sidecar) == ("spring-final/hero/shot.png", "spring-final/hero/shot.json")
    assert moved.output_for(queued) == "spring-final/hero/shot"

    renamed = job("k2", input="a/shot.png")
    renamed.output = "a/shot_seed3"
    write(inbox / "a" / "take2.png", b"image")
    write(inbox / "a" / "take2.json", b"{}")
    moved = find_moved(inbox, renamed)
    assert moved.input == "a/take2.png" and moved.output_for(renamed) == "a/take2_seed3"
    (inbox / "a" / "take2.json").write_bytes(b'{"prompt": "changed"}')
    assert find_moved(inbox, renamed) is None  # the sidecar is part of the job


def test_the_bytes_read_are_checked_against_the_job(tmp_path):
    inbox = tmp_path / "inbox"
    queued = job("k1")
    write(inbox / "a" / "shot.png", b"image")
    write(inbox / "a" / "shot.json", b"{}")
    assert read_input(inbox, queued).belongs_to(queued)
    write(inbox / "a" / "shot.json", b'{"prompt": "new"}')
    assert not read_input(inbox, queued).belongs_to(queued)
    os.unlink(inbox / "a" / "shot.png")
    assert read_input(inbox, queued).data is None


def test_earlier_results_are_reused_only_while_their_manifest_is_that_jobs(tmp_path):
    video, manifest = write(tmp_path / "logo.mp4", b"video"), tmp_path / "logo.json"
    earlier = job("k1", state=JobState.DONE)
    earlier.outputs = {"video": str(video), "manifest": str(manifest)}
    document = {
        "job_id": "k1",
        "state": "done",
        "outputs": {"video": "logo.mp4"},
        "input": {"sha256": earlier.input_sha256, "sidecar_sha256": earlier.sidecar_sha256},
    }
    manifest.write_text(json.dumps(document))
    assert intact_manifest(earlier) == document
    manifest.write_text(json.dumps({**document, "job_id": "k2"}))  # a re-export under the same name
    assert intact_manifest(earlier) is None
    manifest.write_text(json.dumps(document))
    stamp = manifest.stat().st_mtime_ns
    os.utime(video, ns=(stamp + 10**9, stamp + 10**9))  # a video written after its manifest: another job's
    assert intact_manifest(earlier) is None
