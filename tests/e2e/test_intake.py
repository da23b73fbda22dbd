"""Intake against real producers (rsync, cp -r, mv, a slow writer, Finder junk), once with inotify events
and once with polling forced. Each test works in its own inbox folder of one shared `vidrop run`."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import (
    VidropProcess,
    drop,
    job_lines,
    ledger_jobs,
    make_image,
    run_vidrop,
    sidecar,
    vidrop_env,
    wait_for,
)


@dataclass
class Running:
    vidrop: VidropProcess
    inbox: Path
    outbox: Path
    state: Path
    mode: str

    def jobs_under(self, folder: str):
        return [job for job in ledger_jobs(self.state) if job.input.startswith(folder + "/")]

    def wait_lines(self, folder: str, count: int, timeout: float = 120):
        return wait_for(
            lambda: len(lines := job_lines(self.outbox / folder)) >= count and lines,
            timeout,
            what=f"{count} finished jobs in {folder} ({self.mode})",
        )


@pytest.fixture(scope="module", params=["events", "polling"])
def daemon(request, tmp_path_factory, demo_models):
    root = tmp_path_factory.mktemp(f"intake-{request.param}")
    folders = {name: root / name for name in ("inbox", "outbox", "state")}
    for path in folders.values():
        path.mkdir()
    env = vidrop_env(
        folders,
        demo_models["ltx"],
        VIDROP_INTAKE__WATCH=request.param,
        VIDROP_INTAKE__SETTLE_SECONDS="1.0",
        VIDROP_INTAKE__PAIRING_SECONDS="1.5",
        VIDROP_INTAKE__DECODE_GRACE_SECONDS="5",
    )
    vidrop = VidropProcess(env)
    vidrop.wait_event("daemon_ready")
    assert vidrop.events_named("intake_started")[0]["mode"] == request.param
    yield Running(vidrop, folders["inbox"], folders["outbox"], folders["state"], request.param)
    assert vidrop.stop() == 0


def source_tree(root: Path, folders=("north", "south"), per_folder=2) -> Path:
    for folder in folders:
        for index in range(per_folder):
            make_image(root / folder / f"shot{index}.png", color=(index * 40, 90, 200))
            (root / folder / f"shot{index}.json").write_text(sidecar())
    return root


def sentinel(daemon: Running, folder: str) -> None:
    """Drop one more job and wait for it: everything dropped before it has been looked at by then."""
    drop(daemon.inbox / folder / "zz-sentinel.json", sidecar())
    drop(daemon.inbox / folder / "zz-sentinel.png", make_image(daemon.inbox.parent / "s.png").read_bytes())
    wait_for(
        lambda: any(line["input"].endswith("zz-sentinel.png") for line in job_lines(daemon.outbox / folder)),
        120,
        what="the sentinel job",
    )


@pytest.mark.parametrize("how", ["default", "inplace"])
def test_rsync_tree_is_taken_once_and_a_resend_does_nothing(daemon, tmp_path, how):
    source = source_tree(tmp_path / "src")
    target = f"rsync-{how}"
    flags = ["-a"] + (["--inplace"] if how == "inplace" else [])
    subprocess.run(["rsync", *flags, f"{source}/", str(daemon.inbox / target)], check=True)
    for folder in ("north", "south"):
        daemon.wait_lines(f"{target}/{folder}", 2)

    subprocess.run(["rsync", *flags, "--ignore-times", f"{source}/", str(daemon.inbox / target)], check=True)
    sentinel(daemon, target)

    # jobs.jsonl gets its line just before the ledger marks the job done (so a kill between them is
    # reconciled without a second line): wait for the ledger too.
    def all_done():
        jobs = daemon.jobs_under(target)
        return jobs if jobs and all(job.state.value == "done" for job in jobs) else None

    jobs = wait_for(all_done, 30, what="the ledger to mark the sentinel done")
    assert sorted(job.input for job in jobs) == sorted(
        [f"{target}/{f}/shot{i}.png" for f in ("north", "south") for i in range(2)] + [f"{target}/zz-sentinel.png"]
    )


def test_a_slow_writer_is_only_taken_when_complete(daemon, tmp_path):
    big = tmp_path / "big.png"
    make_image(big, size=(400, 300))
    data = big.read_bytes()
    drop(daemon.inbox / "slow" / "big.json", sidecar())
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        data = open({str(big)!r}, "rb").read()
        step = len(data) // 12 + 1
        with open({str(daemon.inbox / "slow" / "big.png")!r}, "wb") as out:
            for start in range(0, len(data), step):
                out.write(data[start:start + step]); out.flush(); time.sleep(0.25)
    """),
        ]
    )
    assert writer.wait(timeout=60) == 0
    daemon.wait_lines("slow", 1)
    jobs = daemon.jobs_under("slow")
    assert len(jobs) == 1 and jobs[0].state.value == "done"
    assert jobs[0].input_sha256 == hashlib.sha256(data).hexdigest()
    assert not (daemon.outbox / "slow" / "big.error.json").exists()


def test_cp_r_of_a_folder_with_defaults_and_mv_from_outside(daemon, tmp_path):
    batch = tmp_path / "spring"
    for index in range(12):
        make_image(batch / f"product{index:02}.png", color=(index * 20, 10, 10))
    (batch / "_defaults.json").write_text(
        json.dumps(
            {"prompt": "{stem} turning in {folder}", "width": 64, "height": 64, "num_frames": 9, "steps": 2, "fps": 8}
        )
    )
    (daemon.inbox / "cp").mkdir()
    subprocess.run(["cp", "-r", str(batch), str(daemon.inbox / "cp")], check=True)
    outside = make_image(tmp_path / "elsewhere" / "moved.png")
    (tmp_path / "elsewhere" / "moved.json").write_text(sidecar())
    (daemon.inbox / "mv").mkdir()
    subprocess.run(
        ["mv", str(tmp_path / "elsewhere" / "moved.json"), str(outside), str(daemon.inbox / "mv")], check=True
    )

    lines = daemon.wait_lines("cp/spring", 12)
    assert len(lines) == 12 and {line["state"] for line in lines} == {"done"}
    manifest = json.loads((daemon.outbox / "cp" / "spring" / "product03.json").read_text())
    assert manifest["parameters"]["prompt"] == "product03 turning in spring"
    daemon.wait_lines("mv", 1)
    assert len(daemon.jobs_under("cp")) == 12 and len(daemon.jobs_under("mv")) == 1


def test_junk_and_links_never_become_jobs(daemon, tmp_path):
    folder = daemon.inbox / "junk"
    folder.mkdir()
    image_bytes = make_image(tmp_path / "x.png").read_bytes()
    for name in (
        "._photo.png",
        ".DS_Store",
        "photo.png.part",
        "~$photo.png",
        "Thumbs.db",
        ".photo.png.Xa3k9Q",
        "photo.png.crdownload",
        ".~lock.photo.png#",
    ):
        (folder / name).write_bytes(image_bytes)
    (folder / "photo.json").write_text(sidecar())
    (folder / "photo.png").symlink_to(tmp_path / "x.png")  # a link out of the inbox
    (folder / "@eaDir").mkdir()
    (folder / "@eaDir" / "thumb.png").write_bytes(image_bytes)
    sentinel(daemon, "junk")
    assert [job.input for job in daemon.jobs_under("junk")] == ["junk/zz-sentinel.png"]
    assert not (daemon.outbox / "junk" / "photo.error.json").exists()


def test_sidecar_before_image_after_image_and_too_late(daemon, tmp_path):
    image = make_image(tmp_path / "p.png").read_bytes()
    drop(daemon.inbox / "pair" / "before.json", sidecar())
    drop(daemon.inbox / "pair" / "before.png", image)
    drop(daemon.inbox / "pair" / "after.png", image)
    drop(daemon.inbox / "pair" / "after.json", sidecar(seed=3))
    drop(daemon.inbox / "pair" / "late.png", image)
    error = daemon.outbox / "pair" / "late.error.json"
    wait_for(error.exists, 60, what="the missing-prompt error file")
    assert "no prompt file" in json.loads(error.read_text())["error"]
    drop(daemon.inbox / "pair" / "late.json", sidecar(seed=4))  # the sidecar comes after all
    wait_for(
        lambda: (daemon.outbox / "pair" / "late.mp4").exists() and not error.exists(),
        60,
        what="the late job's video replacing its error file",
    )
    for name in ("before", "after"):
        assert (daemon.outbox / "pair" / f"{name}.mp4").exists()


def test_same_bytes_again_or_under_a_new_name_and_a_changed_sidecar(daemon, tmp_path):
    image = make_image(tmp_path / "d.png", color=(1, 2, 3)).read_bytes()
    drop(daemon.inbox / "dup" / "hero.json", sidecar(seed=9))
    drop(daemon.inbox / "dup" / "hero.png", image)
    daemon.wait_lines("dup", 1)
    (daemon.inbox / "dup" / "hero.png").write_bytes(image)  # identical bytes again
    drop(daemon.inbox / "dup" / "copy.json", sidecar(seed=9))
    drop(daemon.inbox / "dup" / "copy.png", image)  # the same work under a new name
    lines = daemon.wait_lines("dup", 2)
    assert lines[1]["input"] == "dup/copy.png" and lines[1]["duplicate_of"] == lines[0]["job_id"]
    copy_manifest = json.loads((daemon.outbox / "dup" / "copy.json").read_text())
    assert copy_manifest["duplicate_of"]["input"] == "dup/hero.png"
    assert (daemon.outbox / "dup" / "copy.mp4").read_bytes() == (daemon.outbox / "dup" / "hero.mp4").read_bytes()
    assert len(daemon.vidrop.events_named("job_started")) == len(
        {e["job_id"] for e in daemon.vidrop.events_named("job_started")}
    )  # nothing ran twice

    drop(daemon.inbox / "dup" / "hero.json", sidecar(seed=10))  # a changed sidecar is new work
    lines = daemon.wait_lines("dup", 3)
    assert lines[2]["input"] == "dup/hero.png" and lines[2]["seed"] == 10
    assert json.loads((daemon.outbox / "dup" / "hero.json").read_text())["parameters"]["seed"] == 10


def test_two_images_with_one_stem_keep_distinct_outputs(daemon, tmp_path):
    folder = tmp_path / "stems"
    make_image(folder / "look.png", color=(250, 0, 0))
    make_image(folder / "look.jpg", color=(0, 0, 250))
    (folder / "look.json").write_text(sidecar())
    subprocess.run(["cp", "-r", str(folder), str(daemon.inbox)], check=True)
    daemon.wait_lines("stems", 2)
    names = sorted(p.name for p in (daemon.outbox / "stems").iterdir() if p.name not in ("index.html", "_status.json"))
    assert names == [
        "jobs.jsonl",
        "look_jpg.jpg",
        "look_jpg.json",
        "look_jpg.mp4",
        "look_jpg.preview.webp",
        "look_png.jpg",
        "look_png.json",
        "look_png.mp4",
        "look_png.preview.webp",
    ]


def test_the_inbox_disappears_and_comes_back(folders, demo_models, start_vidrop, tmp_path):
    make_image(folders["inbox"] / "a" / "first.png")
    (folders["inbox"] / "a" / "first.json").write_text(sidecar())
    vidrop = start_vidrop(vidrop_env(folders, demo_models["ltx"]))
    wait_for(lambda: job_lines(folders["outbox"] / "a"), 120, what="the first job")
    parked = tmp_path / "unmounted"
    os.rename(folders["inbox"], parked)  # the share goes away
    vidrop.wait_event("inbox_unavailable")
    assert [job.state.value for job in ledger_jobs(folders["state"])] == ["done"]  # absence is not deletion
    os.rename(parked, folders["inbox"])  # ... and comes back
    drop(folders["inbox"] / "a" / "second.json", sidecar())
    drop(folders["inbox"] / "a" / "second.png", make_image(tmp_path / "2.png").read_bytes())
    vidrop.wait_event("inbox_available")
    wait_for(lambda: len(job_lines(folders["outbox"] / "a")) == 2, 120, what="the job after the share came back")
    assert [job.state.value for job in ledger_jobs(folders["state"])] == ["done", "done"]
    assert vidrop.process.poll() is None


def test_priority_jumps_the_queue_and_move_on_success(folders, demo_models):
    for name, priority in (("a-low", 0), ("b-urgent", 5), ("c-low", 0)):
        make_image(folders["inbox"] / "q" / f"{name}.png")
        (folders["inbox"] / "q" / f"{name}.json").write_text(sidecar(priority=priority))
    done = folders["state"].parent / "done"
    result = run_vidrop(
        vidrop_env(folders, demo_models["ltx"], VIDROP_INTAKE__ON_SUCCESS="move", VIDROP_INTAKE__DONE_DIR=str(done)),
        "once",
    )
    assert result.returncode == 0, result.stderr
    assert [line["input"] for line in job_lines(folders["outbox"] / "q")] == [
        "q/b-urgent.png",
        "q/a-low.png",
        "q/c-low.png",
    ]
    assert sorted(p.name for p in (done / "q").iterdir()) == sorted(
        f"{n}.{ext}" for n in ("a-low", "b-urgent", "c-low") for ext in ("png", "json")
    )
    assert not list((folders["inbox"] / "q").iterdir())
