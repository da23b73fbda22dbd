"""A real `vidrop run` writes the gallery; a real headless chromium opens it from file:// like a designer would."""

import json
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image

from tests.browser import Page, chromium
from tests.conftest import REPO, Faults, drop, drop_job, make_image, run_vidrop, sidecar, vidrop_env, wait_for

ARTEFACTS = REPO / "build" / "test-artifacts"
HOSTILE_NAME = '"><img src=x onerror=alert(1)>'
HOSTILE_PROMPT = "<script>document.title='pwned'</script><img src=x onerror=alert(2)>"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def resolves(page_path: Path, link: str) -> bool:
    """A relative link from the page to a file that exists (no scheme, no absolute path)."""
    parts = urlsplit(link)
    return (
        not parts.scheme
        and not parts.netloc
        and not link.startswith("/")
        and (page_path.parent / unquote(parts.path)).is_file()
    )


@pytest.mark.e2e
def test_the_gallery_shows_queue_progress_results_and_errors_in_a_browser(folders, demo_models, start_vidrop):
    inbox, outbox = folders["inbox"] / "acme", folders["outbox"]
    # Everything is there before the start, so one scan queues it all: one job runs while the others wait,
    # for long enough (24 steps each) that the page shows both.
    for name, color, prompt in (
        ("red", (200, 40, 40), "a small red square"),
        ("blue", (40, 40, 200), "blue"),
        (HOSTILE_NAME, (40, 160, 40), HOSTILE_PROMPT),
    ):
        drop(inbox / f"{name}.json", sidecar(prompt=prompt, steps=24))
        drop(inbox / f"{name}.png", make_image(folders["inbox"].parent / f"{color}.png", color=color).read_bytes())
    drop(inbox / "broken.json", sidecar())
    drop(inbox / "broken.png", b"a text file with an image name")
    # Real jobs take minutes; the tiny model's take a moment, too short to catch between two page writes.
    vidrop = start_vidrop(
        vidrop_env(folders, demo_models["ltx"]), faults=Faults(slow_inputs=["acme/*"], slow_step_seconds=0.1)
    )
    vidrop.wait_event("daemon_ready")

    status_path = outbox / "acme" / "_status.json"

    def busy():
        if vidrop.process.poll() is not None:
            pytest.fail(f"vidrop exited with {vidrop.process.returncode}: {vidrop.log_text()}")
        page = Page((outbox / "acme" / "index.html").read_text()) if status_path.exists() else None
        status = read_json(status_path)  # written just after the page
        states = {job["state"] for job in status["jobs"]} if status else set()
        shown = {card["data-state"] for card in page.cards()} if page else set()
        return (status, page) if {"running", "queued"} <= states and {"running", "queued"} <= shown else None

    status, busy_page = wait_for(busy, 240, what="a running and a waiting job on the page and in _status.json")
    assert status["is_pending"] and status["queue"]["length"] >= 1
    waiting = [job for job in status["jobs"] if job["state"] == "queued"]
    assert sorted(job["queue_position"] for job in waiting) == list(range(1, len(waiting) + 1))
    assert ("meta", {"http-equiv": "refresh", "content": "5"}) in busy_page.elements
    assert "number 1 in the queue" in " ".join(busy_page.text) and "running" in " ".join(busy_page.text)
    # Waiting and running cards show the designer's own picture, made at admission, until the video's exists.
    assert any("/.vidrop-sources/" in src and src.endswith(".jpg") for src in busy_page.sources())

    def finished():
        status = read_json(outbox / "_status.json")
        return (
            status
            and not status["is_pending"]
            and status["counts"] == {"queued": 0, "running": 0, "done": 3, "failed": 1}
        )

    wait_for(finished, 180, what="every job finished in the root _status.json")
    wait_for(lambda: not read_json(status_path)["is_pending"], 30, what="the folder's _status.json to settle")
    status = read_json(status_path)
    assert [job["state"] for job in status["jobs"]].count("done") == 3
    preview = outbox / "acme" / "red.preview.webp"
    with Image.open(preview) as image:
        assert image.format == "WEBP" and image.n_frames == 9 and max(image.size) <= 160
    assert preview.stat().st_size < 300_000
    text = (outbox / "_STATUS.txt").read_text()
    assert "Queue: 0 waiting" in text and "Running now: nothing" in text and "Done: 3, failed: 1" in text
    assert "acme/broken.png" in text and "what to do:" in text
    assert not list((outbox / "acme" / ".vidrop-sources").glob("*.jpg"))  # each done job's own thumbnail shows

    # The page as chromium builds it from the share, with file:// and nothing else.
    index = outbox / "acme" / "index.html"
    page = Page(chromium(index.as_uri(), "--dump-dom"))
    assert page.title == "acme · vidrop"  # the hostile prompt's script would have changed it
    cards = {attrs["id"]: attrs["data-state"] for attrs in page.cards()}
    assert sorted(cards.values()) == ["done", "done", "done", "failed"]
    assert not [attrs for tag, attrs in page.elements if tag == "meta" and attrs.get("http-equiv") == "refresh"]
    text = " ".join(page.text)
    assert "broken.png" in text and "failed" in text and "What to do:" in text
    assert time.strftime("%Z") in text  # times in the server's zone, with its name
    assert f"{HOSTILE_NAME}.png" in page.text and HOSTILE_PROMPT in page.text
    # No script or handler but vidrop's own: the check whether vidrop still runs, and its heartbeat file.
    assert page.scripts_or_handlers() == [("script", {}), ("script", {"src": "../_alive.js"})]
    assert "x" not in page.sources()
    links = page.hrefs() + page.sources()
    assert all(resolves(index, link) for link in links), [link for link in links if not resolves(index, link)]
    names = {unquote(urlsplit(link).path).rsplit("/", 1)[-1] for link in links}
    assert {"red.mp4", "red.json", "red.preview.webp", "broken.error.json", f"{HOSTILE_NAME}.mp4"} <= names
    assert "../index.html" in page.hrefs()  # the way back to every folder

    root = Page(chromium((outbox / "index.html").as_uri(), "--dump-dom"))
    assert "./acme/index.html" in root.hrefs() and resolves(outbox / "index.html", "./acme/index.html")

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTEFACTS / "gallery.png"
    screenshot.unlink(missing_ok=True)
    chromium(index.as_uri(), f"--screenshot={screenshot}", "--window-size=1200,900", "--hide-scrollbars")
    with Image.open(screenshot) as image:
        assert image.format == "PNG" and image.size == (1200, 900)
    print(f"\nscreenshot of the gallery: {screenshot}")
    assert vidrop.stop() == 0

    # `vidrop gallery` writes the pages again from the ledger alone.
    index.unlink()
    result = run_vidrop(vidrop_env(folders, demo_models["ltx"]), "gallery")
    assert result.returncode == 0, result.stderr
    assert len(Page(index.read_text()).cards()) == 4


@pytest.mark.e2e
def test_pages_left_by_a_stopped_daemon_say_it_is_not_running(folders, demo_models, start_vidrop):
    inbox, outbox = folders["inbox"], folders["outbox"]
    for name in ("first", "second"):
        drop(inbox / f"{name}.json", sidecar(steps=24))
        drop(inbox / f"{name}.png", make_image(inbox.parent / f"{name}.png", color=(len(name) * 20, 9, 9)).read_bytes())
    env = vidrop_env(folders, demo_models["ltx"], VIDROP_RECOVERY__LEASE_SECONDS="2")
    vidrop = start_vidrop(env, faults=Faults(slow_inputs=["*"], slow_step_seconds=0.1))

    def waiting():
        status = read_json(outbox / "_status.json")
        return status and {job["state"] for job in status["jobs"]} >= {"queued", "running"}

    wait_for(waiting, 240, what="a running and a waiting job on the page")
    script = wait_for(lambda: (outbox / "_alive.js").is_file() and (outbox / "_alive.js").read_text(), 30)
    live = Page(chromium((outbox / "index.html").as_uri(), "--dump-dom"))
    (banner,) = [attrs for tag, attrs in live.elements if attrs.get("id") == "not-running"]
    assert "hidden" in banner
    vidrop.process.kill()  # dies without a word: nothing rewrites the pages now
    vidrop.process.wait()
    heartbeat = json.loads(script[script.index("(") + 1 : script.rindex(")")])
    last = json.loads((outbox / "_alive.js").read_text()[len("vidropAlive(") : -3])
    wait_for(lambda: time.time() > last["heartbeat"] + last["lease"] + 1, 30, what="the lease to run out")
    page = Page(chromium((outbox / "index.html").as_uri(), "--dump-dom"))
    text = " ".join(page.text)
    assert f"vidrop is not running since {last['local']}" in text and heartbeat["lease"] == 2
    assert "waiting: vidrop is not running" in text and "in the queue" not in text  # no place, no start time
    (banner,) = [attrs for tag, attrs in page.elements if attrs.get("id") == "not-running"]
    assert "hidden" not in banner
    assert "Last heartbeat:" in (outbox / "_STATUS.txt").read_text()


@pytest.mark.e2e
def test_a_fleet_on_postgresql_has_the_gallery_too(folders, demo_models, start_vidrop, postgres_url):
    """One instance here: that two writers of one share do not undo each other is tests/unit/test_gallery.py's."""
    from vidrop.daemon.ledger.postgres import PostgresLedger

    outbox = folders["outbox"]
    for name in ("one", "acme/two", "acme/three"):
        drop_job(folders["inbox"], name)
    env = vidrop_env(folders, demo_models["ltx"], VIDROP_LEDGER_URL=postgres_url)
    vidrop = start_vidrop(env)
    ledger = PostgresLedger(postgres_url)
    try:
        wait_for(lambda: ledger.counts()["done"] == 3, 240, what="three jobs done")
        status = outbox / "_STATUS.txt"
        wait_for(lambda: status.is_file() and "Done: 3, failed: 0" in status.read_text(), 60, what="_STATUS.txt")
        text = status.read_text()
        assert "Queue: 0 waiting" in text and "Running now: nothing" in text and "Last heartbeat: " in text
        acme = wait_for(
            lambda: (
                [card["state"] for card in (read_json(outbox / "acme" / "_status.json") or {"jobs": []})["jobs"]]
                == ["done", "done"]
            ),
            30,
            what="the folder's page, written at most once a second",
        )
        assert acme and read_json(outbox / "_status.json")["counts"]["done"] == 3
        assert "two.png" in (outbox / "acme" / "index.html").read_text() and (outbox / "_alive.js").is_file()
        assert not vidrop.events_named("gallery_unavailable")
    finally:
        ledger.close()
