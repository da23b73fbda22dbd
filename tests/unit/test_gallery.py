"""The gallery writer against a real SQLite ledger and real files, driven by a fake clock."""

import json
import time
from pathlib import Path

from structlog.testing import capture_logs

from tests.browser import Page
from tests.fakes import FakeClock
from vidrop.daemon.gallery.writer import GalleryWriter
from vidrop.daemon.ledger.base import Job, JobState
from vidrop.daemon.ledger.sqlite import SqliteLedger

HOSTILE_NAME = '"><img src=x onerror=alert(1)>.png'
HOSTILE_PROMPT = "<script>document.title='pwned'</script><img src=x onerror=alert(2)>"
OUTPUTS = {"video": ".mp4", "thumbnail": ".jpg", "preview": ".preview.webp", "manifest": ".json"}


def make_job(
    number: int,
    folder: str = "acme",
    state: JobState = JobState.QUEUED,
    name: str | None = None,
    prompt: str = "a red square",
    created_at: float = 1_700_000_000.0,
) -> Job:
    key = f"{folder}-{number:06d}".ljust(20, "k")
    job = Job(
        id=key[:16] + f"{number:06d}",
        key=key,
        input=f"{folder}/{name or f'img{number:05d}.png'}",
        sidecar=None,
        input_sha256="a" * 64,
        sidecar_sha256=None,
        seed=number,
        state=state,
        params={"prompt": prompt, "width": 64, "height": 64, "num_frames": 9, "fps": 8, "steps": 2, "format": "mp4"},
        created_at=created_at + number,
    )
    if state in (JobState.DONE, JobState.FAILED):
        job.started_at, job.finished_at = job.created_at + 1, job.created_at + 3
    if state is JobState.FAILED:
        job.error = {"error": "The file is not an image vidrop can read.", "what_to_do": "Export it again."}
    return job


def writer_for(tmp_path, clock, **options):
    ledger = SqliteLedger(tmp_path / "ledger.sqlite3")
    (tmp_path / "outbox").mkdir(exist_ok=True)  # the daemon makes it at start; the gallery never does
    return ledger, GalleryWriter(ledger=ledger, outbox=tmp_path / "outbox", clock=clock, **options)


def test_pages_show_each_state_in_words_and_refresh_only_while_work_is_pending(tmp_path):
    clock = FakeClock(1_700_000_000.0)
    ledger, writer = writer_for(tmp_path, clock)
    jobs = [make_job(1, state=JobState.DONE), make_job(2, state=JobState.FAILED), make_job(3), make_job(4)]
    for job in jobs:
        ledger.enqueue(job)
    writer.rebuild()
    running = ledger.claim_next("test", clock.time(), 30.0)
    writer.job_changed(running, JobState.RUNNING, {})
    clock.advance(2)
    writer.job_progress(running, 1, 2)

    index = tmp_path / "outbox" / "acme" / "index.html"
    page = Page(index.read_text())
    assert [card["data-state"] for card in page.cards()] == ["queued", "running", "failed", "done"]  # newest first
    text = " ".join(page.text)
    assert "waiting: number 1 in the queue, starts in about" in text
    assert "running: step 1 of 2, about 2 s left" in text
    assert "The file is not an image vidrop can read." in text and "What to do: Export it again." in text
    assert ("meta", {"http-equiv": "refresh", "content": "5"}) in page.elements
    status = json.loads((tmp_path / "outbox" / "acme" / "_status.json").read_text())
    assert status["is_pending"] and status["counts"] == {"queued": 1, "running": 1, "done": 1, "failed": 1}
    assert status["running"]["input"] == "acme/img00003.png" and status["running"]["step"] == 1
    assert status["queue"]["length"] == 1 and status["jobs"][0]["queue_position"] == 1
    assert "Running now: acme/img00003.png, step 1 of 2" in (tmp_path / "outbox" / "_STATUS.txt").read_text()
    root = Page((tmp_path / "outbox" / "index.html").read_text())
    assert "./acme/index.html" in root.hrefs()

    for job in (running, ledger.claim_next("test", clock.time(), 30.0)):
        ledger.finish(job.id, clock.time(), {})
        clock.advance(1)
        writer.job_changed(job, JobState.DONE, {})
    page = Page(index.read_text())
    assert {card["data-state"] for card in page.cards()} == {"done", "failed"}
    assert not [attrs for tag, attrs in page.elements if attrs.get("http-equiv") == "refresh"]
    assert not json.loads((tmp_path / "outbox" / "_status.json").read_text())["is_pending"]
    ledger.close()


def test_a_folder_is_written_at_most_once_a_second_and_the_last_change_is_never_lost(tmp_path):
    clock = FakeClock(1_700_000_000.0)
    ledger, writer = writer_for(tmp_path, clock)
    jobs = [make_job(number) for number in range(3)]
    ledger.enqueue(jobs[0])
    writer.job_changed(jobs[0], JobState.QUEUED, {})
    index = tmp_path / "outbox" / "acme" / "index.html"
    assert len(Page(index.read_text()).cards()) == 1
    for job in jobs[1:]:  # within the same second: held back
        clock.advance(0.3)
        ledger.enqueue(job)
        writer.job_changed(job, JobState.QUEUED, {})
    assert len(Page(index.read_text()).cards()) == 1 and writer.is_dirty
    assert writer.flush() == []
    clock.advance(0.5)
    assert set(writer.flush()) == {"acme", ""}
    assert len(Page(index.read_text()).cards()) == 3 and not writer.is_dirty
    ledger.close()


def test_steps_alone_rewrite_a_folder_less_often_than_state_changes(tmp_path):
    clock = FakeClock(1_700_000_000.0)
    ledger, writer = writer_for(tmp_path, clock, progress_interval=2.5)
    first, second = make_job(1), make_job(2)
    ledger.enqueue(first)
    ledger.enqueue(second)
    running = ledger.claim_next("test", clock.time(), 30.0)
    writer.job_changed(running, JobState.RUNNING, {})
    status = tmp_path / "outbox" / "acme" / "_status.json"
    clock.advance(1.5)
    writer.job_progress(running, 1, 4)  # past min_interval, not past progress_interval: held back
    assert json.loads(status.read_text())["running"]["step"] == 0 and writer.is_dirty
    clock.advance(1.0)
    writer.job_progress(running, 2, 4)
    assert json.loads(status.read_text())["running"]["step"] == 2
    clock.advance(1.0)
    writer.job_progress(running, 3, 4)
    ledger.finish(running.id, clock.time(), {})
    writer.job_changed(running, JobState.DONE, {})  # a state change keeps the once-a-second rule
    assert json.loads(status.read_text())["counts"]["done"] == 1 and not writer.is_dirty
    ledger.close()


def test_hostile_names_and_prompts_are_shown_as_text(tmp_path):
    clock = FakeClock(1_700_000_000.0)
    ledger, writer = writer_for(tmp_path, clock)
    job = make_job(1, state=JobState.DONE, name=HOSTILE_NAME, prompt=HOSTILE_PROMPT)
    job.outputs = {"video": str(tmp_path / "outbox" / "acme" / HOSTILE_NAME.replace(".png", ".mp4"))}
    (tmp_path / "outbox" / "acme").mkdir(parents=True)
    (tmp_path / "outbox" / "acme" / HOSTILE_NAME.replace(".png", ".mp4")).write_bytes(b"video")
    ledger.enqueue(job)
    writer.rebuild()
    page = Page((tmp_path / "outbox" / "acme" / "index.html").read_text())
    assert HOSTILE_NAME in page.text and HOSTILE_PROMPT in page.text
    # No script or handler but vidrop's own: the check whether vidrop still runs, and its heartbeat file.
    assert page.scripts_or_handlers() == [("script", {}), ("script", {"src": "../_alive.js"})]
    assert not [attrs for tag, attrs in page.elements if tag == "img" and attrs.get("src") == "x"]
    assert "./%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.mp4" in page.hrefs()
    ledger.close()


def test_ten_thousand_jobs_are_paged_in_stable_blocks_and_render_fast(tmp_path):
    clock = FakeClock(1_700_000_000.0)
    ledger, writer = writer_for(tmp_path, clock, page_size=50)
    for number in range(10_000):
        ledger.enqueue(make_job(number, state=JobState.DONE))
    folder = tmp_path / "outbox" / "acme"

    started = time.perf_counter()
    writer.rebuild(every_page=False)
    first = time.perf_counter() - started
    pages = sorted(folder.glob("page-*.html"))
    assert len(pages) == 198  # 200 blocks of 50; the newest two are on the index
    index = Page((folder / "index.html").read_text())
    assert len(index.cards()) == 100 and index.cards()[0]["id"] == f"job-{make_job(9999).id}"
    assert "./page-198.html" in index.hrefs()
    oldest = Page((folder / "page-1.html").read_text())
    assert oldest.cards()[-1]["id"] == f"job-{make_job(0).id}" and "./page-2.html" in oldest.hrefs()

    # One more job starts block 201: block 199 leaves the index for its own page, the top page before it
    # gets a "newer" link to it, and the 197 pages below are not touched.
    before = {page: page.stat().st_mtime_ns for page in pages}
    clock.advance(5)
    job = make_job(10_000, created_at=clock.time())
    ledger.enqueue(job)
    started = time.perf_counter()
    writer.job_changed(job, JobState.QUEUED, {})
    update = time.perf_counter() - started
    assert [page for page in pages if page.stat().st_mtime_ns != before[page]] == [folder / "page-198.html"]
    assert "./page-199.html" in Page((folder / "page-198.html").read_text()).hrefs()
    assert "./index.html" in Page((folder / "page-199.html").read_text()).hrefs()
    assert Page((folder / "index.html").read_text()).cards()[0]["data-state"] == "queued"

    # A change to an old job rewrites its own page only.
    pages = sorted(folder.glob("page-*.html"))
    before = {page: page.stat().st_mtime_ns for page in pages}
    clock.advance(5)
    old = make_job(7)
    ledger.fail(old.id, clock.time(), {"error": "gone", "what_to_do": "drop it again"})
    writer.job_changed(ledger.get(old.id), JobState.FAILED, {})
    changed = [page for page in pages if page.stat().st_mtime_ns != before[page]]
    assert changed == [folder / "page-1.html"] and "gone" in (folder / "page-1.html").read_text()
    print(
        f"\n10,000-job folder: first write of index + 198 pages {first * 1000:.0f} ms, "
        f"one change (index, _status.json, root, _STATUS.txt) {update * 1000:.0f} ms"
    )
    ledger.close()


def test_the_ledger_views_group_by_folder_and_follow_the_claim_order(tmp_path):
    ledger = SqliteLedger(tmp_path / "ledger.sqlite3")
    jobs = [make_job(1, folder="a"), make_job(2, folder="a/b"), make_job(3, folder="a"), make_job(4, folder="a_")]
    jobs[2].priority = 5
    top = make_job(5, folder="x")
    top.input = "top.png"
    for job in [*jobs, top]:
        ledger.enqueue(job)
    assert [job.id for job in ledger.folder_jobs("a", offset=0, limit=10)] == [jobs[0].id, jobs[2].id]
    assert [job.id for job in ledger.folder_jobs("", offset=0, limit=10)] == [top.id]
    assert ledger.folder_position("a", jobs[2].id) == 1 and ledger.folder_position("a", "nope") is None
    assert {folder: summary["queued"] for folder, summary in ledger.folder_summaries().items()} == {
        "a": 2,
        "a/b": 1,
        "a_": 1,
        "": 1,
    }
    assert ledger.queued_ids()[0] == jobs[2].id == ledger.claim_next("test", 1.0, 30.0).id
    ledger.close()


def test_a_start_rewrites_only_folders_whose_pages_are_behind_the_ledger(tmp_path):
    clock = FakeClock(1_700_000_000.0)
    ledger, writer = writer_for(tmp_path, clock)
    for folder in ("north", "south", "west"):
        ledger.enqueue_many([make_job(number, folder, JobState.DONE) for number in range(3)])
    ledger.enqueue(make_job(9, "east", JobState.QUEUED))
    clock.advance(60)
    assert set(writer.rebuild(every_page=False)) == {"north", "south", "west", "east", ""}

    # A restart: the pages of finished folders are current; the pending folder and the root are written again,
    # and so is a folder whose job changed while the daemon was away (a retried failure, say).
    ledger.fail(make_job(1, "west", JobState.DONE).id, clock.time() + 5, {"error": "x"})
    clock.advance(60)
    second_ledger, restarted = writer_for(tmp_path, clock)
    assert set(restarted.rebuild(every_page=False)) == {"east", "west", ""}
    (tmp_path / "outbox" / "north" / "_status.json").unlink()  # pages removed by hand: written again
    assert set(restarted.rebuild(every_page=False)) == {"north", "east", ""}
    assert set(restarted.rebuild(every_page=True)) == {"north", "south", "west", "east", ""}  # `vidrop gallery`
    second_ledger.close()
    ledger.close()


def test_a_heartbeat_that_cannot_be_written_is_logged_once_and_never_raised(tmp_path):
    clock = FakeClock()
    ledger, writer = writer_for(tmp_path, clock)
    (tmp_path / "outbox").mkdir(exist_ok=True)
    (tmp_path / "outbox" / "_alive.js").mkdir()  # the rename onto it fails, as on a full or broken share
    with capture_logs() as logs:
        writer.alive(clock.time(), 30)
        writer.alive(clock.time() + 10, 30)
    assert [entry["event"] for entry in logs] == ["gallery_write_failed"]
    (tmp_path / "outbox" / "_alive.js").rmdir()
    writer.alive(clock.time() + 20, 30)
    assert "vidropAlive(" in (tmp_path / "outbox" / "_alive.js").read_text()
    (tmp_path / "outbox" / "_alive.js").unlink()
    (tmp_path / "outbox").rmdir()  # a share that went away
    writer.alive(clock.time() + 30, 30)
    assert not (tmp_path / "outbox").exists(), "the heartbeat made the outbox again on the local disk"


def test_a_video_with_sound_plays_on_its_card_muted_until_clicked(tmp_path):
    clock = FakeClock(1_700_000_000.0)
    ledger, writer = writer_for(tmp_path, clock)
    folder = tmp_path / "outbox" / "acme"
    folder.mkdir(parents=True)
    for number, audio in ((1, True), (2, False)):
        job = make_job(number, state=JobState.DONE)
        job.params["audio"] = audio
        job.outputs = {kind: str(folder / f"img{number:05d}{suffix}") for kind, suffix in OUTPUTS.items()}
        for path in job.outputs.values():
            Path(path).write_bytes(b"made")
        ledger.enqueue(job)
    writer.rebuild()
    page = Page((folder / "index.html").read_text())
    videos = [attrs for tag, attrs in page.elements if tag == "video"]
    assert len(videos) == 1 and videos[0]["src"] == "./img00001.mp4" and videos[0]["class"] == "sound"
    assert "muted" in videos[0] and "controls" not in videos[0] and videos[0]["poster"] == "./img00001.preview.webp"
    assert page.sources() == ["./img00002.preview.webp"]  # the silent one keeps its looping preview
    ledger.close()


def test_two_instances_writing_one_share_never_bring_back_what_the_other_made_stale(tmp_path):
    clock = FakeClock(1_700_000_000.0)
    ledger, first = writer_for(tmp_path, clock)
    second = GalleryWriter(ledger=ledger, outbox=tmp_path / "outbox", clock=clock)
    for job in (make_job(1), make_job(2)):
        ledger.enqueue(job)
    for writer in (first, second):
        writer.rebuild()
        writer.alive(clock.time(), 30)
    status = tmp_path / "outbox" / "_STATUS.txt"
    assert "Queue: 2 waiting" in status.read_text()
    for _ in range(2):  # the first instance runs both jobs; the second, idle, only beats
        job = ledger.claim_next("first", clock.time(), 30.0)
        first.job_changed(job, JobState.RUNNING, {})
        clock.advance(2)
        ledger.finish(job.id, clock.time(), {}, owner="first")
        first.job_changed(ledger.get(job.id), JobState.DONE, {})
    clock.advance(5)
    second.alive(clock.time(), 30)  # its own last look at the ledger was two jobs ago
    text = status.read_text()
    assert "Queue: 0 waiting" in text and "Done: 2, failed: 0" in text and "Running now: nothing" in text
    assert text.count("Last heartbeat: ") == 1 and time.strftime("%H:%M:%S", time.localtime(clock.time())) in text
    assert json.loads((tmp_path / "outbox" / "_status.json").read_text())["counts"]["done"] == 2


def test_cards_show_the_source_picture_until_done_label_text_only_jobs_and_say_local_times(tmp_path, monkeypatch):
    from PIL import Image

    from vidrop.daemon.gallery.sources import SourceThumbnails
    from vidrop.daemon.outbox import Outbox

    monkeypatch.setenv("TZ", "Europe/Paris")  # the server's zone: CET in November
    time.tzset()
    try:
        clock = FakeClock(1_700_000_000.0)  # 2023-11-14 22:13:20 UTC
        ledger, writer = writer_for(tmp_path, clock)
        picture, text_job = make_job(1), make_job(2, name="idea.json")
        text_job.sidecar = text_job.input  # a sidecar alone: text to video
        source = tmp_path / "inbox" / "acme" / "img00001.png"
        source.parent.mkdir(parents=True)
        Image.new("RGB", (1200, 600), (200, 40, 40)).save(source)
        thumbnails = SourceThumbnails(tmp_path / "outbox", max_pixels=64_000_000)
        thumbnails.make(picture, Outbox(tmp_path / "outbox").names_for(picture.input), source)
        for job in (picture, text_job):
            ledger.enqueue(job)
        writer.rebuild()
        index = tmp_path / "outbox" / "acme" / "index.html"
        page = Page(index.read_text())
        thumbnail = tmp_path / "outbox" / "acme" / ".vidrop-sources" / "img00001.jpg"
        with Image.open(thumbnail) as made:
            assert made.format == "JPEG" and made.size == (320, 160)
        assert "./.vidrop-sources/img00001.jpg" in page.sources()
        assert "text only" in page.text and "text only: no picture, the video is made from the prompt" in page.text
        assert "2023-11-14 23:13 CET" in page.text  # the card's time (img00001: created one second later)
        cards = json.loads((tmp_path / "outbox" / "acme" / "_status.json").read_text())["jobs"]
        assert [card["text_only"] for card in cards] == [True, False]
        assert "updated 2023-11-14 23:13:20 CET" in (tmp_path / "outbox" / "_STATUS.txt").read_text()

        job = ledger.claim_next("test", clock.time(), 30.0)
        writer.job_changed(job, JobState.RUNNING, {})
        ledger.finish(job.id, clock.time(), {}, owner="test")
        writer.job_changed(ledger.get(job.id), JobState.DONE, {})
        writer.flush(force=True)
        assert not thumbnail.exists() and "./.vidrop-sources/img00001.jpg" not in Page(index.read_text()).sources()
        ledger.close()
    finally:
        monkeypatch.undo()
        time.tzset()


def test_status_txt_never_prints_unknown_as_a_time():
    from vidrop.daemon.gallery.pages import status_text

    counts = {state.value: 0 for state in JobState}
    common = dict(updated_at="2026-12-02T10:00:00Z", queue_length=3, running=None, counts=counts, failures=[])
    before_any_job = status_text(**common, drain_seconds=None)
    assert "Queue: 3 waiting, time to finish not known until a job is done" in before_any_job
    assert "unknown" not in before_any_job
    assert "Queue: 3 waiting, all done in about 4 min" in status_text(**common, drain_seconds=240)
