"""Names: escaping for people and for the ledger, output names that fit and never collide, sinks that never
refuse an undecodable name."""

import hashlib
import io
import json
import os
import random
import unicodedata
from pathlib import Path

import pytest
import structlog

from tests.unit.test_ledger import open_ledger  # noqa: F401 (a fixture: SQLite and PostgreSQL)
from vidrop.daemon.gallery.pages import href, status_json
from vidrop.daemon.intake.pairing import output_stem, text_output_stem
from vidrop.daemon.ledger.base import Job, JobState, TakenInput
from vidrop.daemon.ledger.sqlite import SqliteLedger
from vidrop.daemon.logs import JournalLogger, configure_logging
from vidrop.daemon.names import (
    fit_stem,
    from_ledger_text,
    json_text,
    ledger_text,
    name_bytes,
    printable,
    restored,
    shown,
)
from vidrop.daemon.outbox import STEM_MAX_BYTES, Outbox, OutputNames, _temporary

LATIN1 = os.fsdecode(b"caf\xe9")


def test_an_undecodable_name_is_shown_with_escapes_and_its_bytes_beside_it():
    assert shown(LATIN1 + ".png") == "caf\\xe9.png"
    assert shown("café.png") == "café.png"
    document = {"input": {"path": f"a/{LATIN1}.png", "sha256": "0" * 64}, "outputs": [LATIN1], "n": 1}
    written = printable(document)
    assert written == {
        "input": {"path": "a/caf\\xe9.png", "path_hex": b"a/caf\xe9.png".hex(), "sha256": "0" * 64},
        "outputs": ["caf\\xe9"],
        "n": 1,
    }
    assert restored(written) == {**document, "outputs": ["caf\\xe9"]}  # list items have no place for hex
    assert json_text(document).encode("utf-8")
    assert json_text({"a": "plain"}) == json.dumps({"a": "plain"}, ensure_ascii=False)


def test_ledger_text_is_valid_utf8_and_gives_the_name_back_exactly():
    rng = random.Random(3)
    alphabet = ["\\", "x", "e", "9", "8", "f", "a", "/", "é", "\udce9", "\udc80", "\udcff"]
    seen: dict[str, str] = {}
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        stored = ledger_text(text)
        stored.encode("utf-8")
        assert from_ledger_text(stored) == text
        assert seen.setdefault(stored, text) == text  # two names never share a stored form
    # Names without undecodable bytes are stored as they are (also those in older ledgers).
    for name in ("photo.png", "a\\b.png", "C:\\shots\\x.png", "x\\", "é.png"):
        assert ledger_text(name) == name and from_ledger_text(name) == name
    assert ledger_text(f"a/{LATIN1}.png") == "a/caf\\xe9.png"
    assert ledger_text(f"{LATIN1}/") == ledger_text(LATIN1) + "/"  # folder prefixes stay prefixes


def test_a_stem_too_long_is_shortened_at_a_character_boundary_with_a_hash():
    assert fit_stem("short", 50) == "short"
    long_a, long_b = "a" * 230 + "1", "a" * 230 + "2"
    assert len(name_bytes(fit_stem(long_a, 212))) <= 212
    assert fit_stem(long_a, 212) != fit_stem(long_b, 212) and fit_stem(long_a, 212).startswith("a" * 200)
    accented = fit_stem("é" * 124, 212)
    assert len(name_bytes(accented)) <= 212 and accented.encode("utf-8")  # never half a character
    decomposed = unicodedata.normalize("NFD", "é") * 80  # "e" + U+0301, 3 bytes each
    kept = fit_stem(decomposed, 100).split("~")[0]
    assert kept == unicodedata.normalize("NFD", "é") * (len(kept) // 2)  # no "e" without its accent
    undecodable = fit_stem(os.fsdecode(b"\xe9" * 240), 212)
    assert len(name_bytes(undecodable)) <= 212


@pytest.mark.parametrize("stem_bytes", [1, 200, 212, 213, 230, 251])
def test_every_output_and_temporary_name_fits_in_255_bytes(tmp_path, stem_bytes):
    outbox = Outbox(tmp_path, owner="0123abcd")
    for stem in ("s" * stem_bytes, "é" * (stem_bytes // 2), os.fsdecode(b"\xe9" * stem_bytes)):
        for output in (stem, f"{stem}_png", f"{stem}_dusk_seed12"):
            names = outbox.names_for_output(f"ln/{output}")
            for name in names.file_names:
                assert len(name_bytes(name)) <= 255
                assert len(name_bytes(outbox._temporary(names.folder, name).name)) <= 255
    assert len(name_bytes(_temporary(tmp_path, "x" * 250, owner="a-much-longer-owner-token").name)) <= 255
    assert len(name_bytes(STEM_MAX_BYTES * "s")) == STEM_MAX_BYTES


def test_inputs_named_like_outputs_get_names_of_their_own(tmp_path):
    images = [
        "button.png",
        "button.error.png",
        "field.error.png",
        "x.png",
        "x.preview.png",
        "_status.png",
        "index.png",
        "jobs.png",
        "look.png",
        "look.jpg",
        "look_png.png",
        "look_png_png.png",
        "shot.PNG",
        "shot.png",
        "Thing.ERROR.png",
        "page-1.png",
    ]
    for name in images:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "alone.error.json").write_bytes(b"{}")
    (tmp_path / "lonely.json").write_bytes(b"{}")
    stems = {name: output_stem(tmp_path / name, lambda _: False) for name in images}
    stems["alone.error.json"] = text_output_stem(tmp_path / "alone.error.json")
    stems["lonely.json"] = text_output_stem(tmp_path / "lonely.json")
    assert stems["button.png"] == "button" and stems["button.error.png"] == "button.error_png"
    assert stems["field.error.png"] == "field.error_png" and stems["x.preview.png"] == "x.preview_png"
    assert stems["_status.png"] == "_status_png" and stems["index.png"] == "index" and stems["jobs.png"] == "jobs"
    assert stems["look_png.png"] == "look_png_png" and stems["look.png"] == "look_png"
    assert {stems["shot.PNG"], stems["shot.png"]} == {"shot_PNG", "shot_png"}
    assert stems["alone.error.json"] == "alone.error_json" and stems["lonely.json"] == "lonely"
    outbox = Outbox(tmp_path / "out")
    owners: dict[str, str] = {name: "gallery" for name in ("_status.json", "index.html", "jobs.jsonl", "_STATUS.txt")}
    for name, stem in stems.items():
        for file_name in outbox.names_for_output(stem).file_names:
            assert owners.setdefault(file_name, name) == name, f"{name} and {owners[file_name]} share {file_name}"


def test_removing_a_jobs_temporaries_leaves_those_of_a_stem_that_starts_alike(tmp_path):
    outbox = Outbox(tmp_path, owner="aaaa0000")
    mine = outbox._temporary(tmp_path, "x.mp4")
    other = outbox._temporary(tmp_path, "x.y.mp4")  # the live write of input x.y.png's job
    for path in (mine, other):
        path.write_bytes(b"")
    assert outbox.remove_job_temporaries(outbox.names_for_output("x")) == [mine]
    assert other.exists()


def a_job(key: str, path: str, output: str) -> Job:
    return Job(
        id=key[:16],
        key=key,
        input=path,
        sidecar=path.rsplit(".", 1)[0] + ".json",
        input_sha256="a" * 64,
        sidecar_sha256=None,
        params={"prompt": f"{LATIN1} turning"},
        seed=1,
        created_at=float(len(key)),
        output=output,
    )


PATHS = [f"{LATIN1}/{LATIN1}.png", f"{LATIN1}/plain.png", "back\\slash/a\\xe9.png", "plain.png"]


def test_the_ledger_keeps_undecodable_and_backslashed_paths_exactly(open_ledger):  # noqa: F811 (the fixture above)
    ledger = open_ledger()
    for index, path in enumerate(PATHS):
        assert ledger.enqueue(a_job(f"k{index:0<19}", path, path.rsplit(".", 1)[0]))
    assert [job.input for job in ledger.jobs()] == PATHS
    assert ledger.jobs()[0].output == f"{LATIN1}/{LATIN1}" and ledger.jobs()[0].sidecar == f"{LATIN1}/{LATIN1}.json"
    assert ledger.jobs()[0].params["prompt"].startswith(LATIN1)
    assert [job.input for job in ledger.jobs_for_input(PATHS[0])] == [PATHS[0]]
    ledger.fail(ledger.jobs()[0].id, 5.0, {"error": "x", "detail": f"{LATIN1}.png"})
    assert ledger.get(ledger.jobs()[0].id).error["detail"] == f"{LATIN1}.png"
    assert [job.input for job in ledger.requeue(inputs=[PATHS[0]])] == [PATHS[0]]
    ledger.remember_inputs([TakenInput(path, "1:2", None, f"k{index:0<19}", 1.0) for index, path in enumerate(PATHS)])
    assert sorted(path for path, *_ in ledger.taken_inputs()) == sorted(PATHS)
    ledger.forget_inputs(PATHS[:1])
    assert sorted(path for path, *_ in ledger.taken_inputs()) == sorted(PATHS[1:])


def test_the_gallerys_folder_views_group_undecodable_folders(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.sqlite3")
    try:
        for index, path in enumerate(PATHS):
            ledger.enqueue(a_job(f"k{index:0<19}", path, path.rsplit(".", 1)[0]))
        assert {job.input for job in ledger.folder_jobs(LATIN1, offset=0, limit=10)} == set(PATHS[:2])
        assert ledger.folder_position(LATIN1, ledger.jobs()[1].id) == 1
        assert set(ledger.folder_summaries()) == {LATIN1, "back\\slash", ""}
    finally:
        ledger.close()


def test_log_events_with_undecodable_names_are_json_with_escapes_and_hex():
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    try:
        structlog.get_logger().info("job_queued", input=f"{LATIN1}.png", path=Path(LATIN1), names=[LATIN1])
    finally:
        configure_logging("info", "json", stream=io.StringIO())
    event = json.loads(stream.getvalue())
    assert event["input"] == "caf\\xe9.png" and bytes.fromhex(event["input_hex"]) == b"caf\xe9.png"
    assert event["path"] == "caf\\xe9" and event["names"] == ["caf\\xe9"]


def test_journal_fields_of_an_undecodable_name_are_utf8():
    sent = []
    stream = io.StringIO()

    def send(message, **fields):  # journal.send encodes every field as UTF-8, as this does
        message.encode("utf-8")
        for value in fields.values():
            value.encode("utf-8")
        sent.append(fields)

    configure_logging("info", "journal", stream=stream, journal_send=send)
    try:
        structlog.get_logger().warning("job_finished", input=f"{LATIN1}.png", state="failed")
    finally:
        configure_logging("info", "json", stream=io.StringIO())
    assert sent[0]["INPUT"] == "caf\\xe9.png" and sent[0]["INPUT_HEX"] == b"caf\xe9.png".hex()
    assert isinstance(JournalLogger(send, stream), JournalLogger)


def test_gallery_links_are_the_names_bytes_and_status_json_is_utf8():
    assert href(f"{LATIN1}.mp4") == "./caf%E9.mp4"
    assert href("a b#?.mp4") == "./a%20b%23%3F.mp4"
    text = status_json({"folder": LATIN1, "jobs": []})
    assert json.loads(text) == {"folder": "caf\\xe9", "folder_hex": "636166e9", "jobs": []}


def test_output_names_construct_the_same_shortened_stem_everywhere(tmp_path):
    stem = "q" * 240
    assert OutputNames(folder=tmp_path, stem=stem) == Outbox(tmp_path).names_for_output(stem)
    assert Outbox(tmp_path).names_for(f"{stem}.png").manifest.name.endswith(".json")


def test_a_hook_command_gets_a_failed_undecodable_job_as_json_and_its_name_in_the_environment(tmp_path):
    import sys

    from vidrop.config.settings import HookSettings
    from vidrop.daemon.hooks import HookDispatcher

    received = tmp_path / "received"
    script = (
        "import os, sys; open(sys.argv[1], 'wb').write(sys.stdin.buffer.read() + b'\\n' + "
        "os.environb[b'VIDROP_JOB_INPUT'])"
    )
    settings = HookSettings(command=[sys.executable, "-c", script, str(received)], retries=0, timeout_seconds=30)
    hooks = HookDispatcher(settings, dead_letter=tmp_path / "dead.jsonl")
    hooks.start()
    job = a_job("k" * 20, f"{LATIN1}.png", LATIN1)
    hooks.job_changed(
        job,
        JobState.FAILED,
        {"error_file": str(tmp_path / f"{LATIN1}.error.json"), "error": {"input": job.input, "error": "no prompt"}},
    )
    hooks.close()
    payload, environment = received.read_bytes().split(b"\n")
    assert json.loads(payload)["input_hex"] == b"caf\xe9.png".hex() and environment == b"caf\xe9.png"
    assert not (tmp_path / "dead.jsonl").exists()


def test_an_input_moved_beside_one_of_the_same_long_name_gets_a_name_that_fits(tmp_path):
    from types import SimpleNamespace

    from vidrop.daemon.inputs import InputDisposal

    inbox, done = tmp_path / "inbox", tmp_path / "done"
    name = "d" * 247 + ".png"
    for folder in (inbox, done):
        folder.mkdir()
        (folder / name).write_bytes(b"image")
    (inbox / "p[1].png").write_bytes(b"image")  # glob characters in a stem: the sidecar p[1].json is shared
    (inbox / "p[1].jpg").write_bytes(b"image")
    (inbox / "p[1].json").write_bytes(b"{}")
    intake = SimpleNamespace(on_success="move", on_failure="keep", done_dir=done, failed_dir=tmp_path / "failed")
    ended: dict[str, Job] = {}
    ledger = SimpleNamespace(jobs_for_input=lambda relative: [ended[relative]])  # each input's one job, ended
    disposal = InputDisposal(SimpleNamespace(inbox=inbox, intake=intake), ledger)

    def finish(job: Job) -> None:
        job.input_sha256, job.state = hashlib.sha256(b"image").hexdigest(), JobState.DONE
        ended[job.input] = job
        disposal.job_changed(job, JobState.DONE, {})

    job = a_job("m" * 20, name, name[:-4])
    job.sidecar = None
    finish(job)
    moved = [path.name for path in done.iterdir() if path.name != name]
    assert len(moved) == 1 and len(name_bytes(moved[0])) <= 255 and job.id in moved[0]
    finish(a_job("n" * 20, "p[1].png", "p[1]_png"))
    assert (inbox / "p[1].json").exists() and not (inbox / "p[1].png").exists()
