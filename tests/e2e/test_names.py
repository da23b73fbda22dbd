"""File names a real `vidrop run` must survive: bytes that are not UTF-8, names near the 255-byte limit,
names that look like vidrop's own outputs, and a seeded stream of generated names and contents."""

import json
import os
import random
import unicodedata
from pathlib import Path

import pytest

from tests.conftest import job_lines, make_image, sidecar, vidrop_env, wait_for

LATIN1 = os.fsdecode(b"caf\xe9")  # a Latin-1 "é", as older Windows and macOS tools write it on a share


def image_bytes(tmp_path: Path, name: str, colour=(30, 120, 200)) -> bytes:
    return make_image(tmp_path / "sources" / f"{abs(hash(name))}.png", color=colour).read_bytes()


def read_json(path: Path) -> dict:
    return json.loads(path.read_bytes())


def drop(path: Path, data: bytes | str) -> Path:
    """Write under a short dot-name, then rename into place (conftest's drop adds to the name, which a
    name near 255 bytes has no room for)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".drop-{random.randrange(1 << 32):08x}"
    temporary.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(temporary, path)
    return path


def alive_until(vidrop, condition, timeout: float, what: str):
    """wait_for, failing at once (with the log) if the daemon dies on the way."""

    def check():
        if vidrop.process.poll() is not None:
            pytest.fail(f"vidrop exited with {vidrop.process.returncode} waiting for {what}: {vidrop.log_text()}")
        return condition()

    return wait_for(check, timeout, what=what)


def test_a_name_that_is_not_utf8_is_processed_and_logged_escaped(folders, demo_models, start_vidrop, tmp_path):
    inbox, outbox = folders["inbox"], folders["outbox"]
    # Heartbeats every second: they tell the ledger what runs, by name, while the job (about 2 s) runs.
    env = vidrop_env(folders, demo_models["ltx"], VIDROP_RECOVERY__LEASE_SECONDS="3")
    vidrop = start_vidrop(env)
    vidrop.wait_event("daemon_ready")

    drop(inbox / LATIN1 / f"{LATIN1}.json", sidecar(steps=30))
    drop(inbox / LATIN1 / f"{LATIN1}.png", image_bytes(tmp_path, "cafe"))
    drop(inbox / f"{LATIN1}-lonely.png", image_bytes(tmp_path, "lonely", (1, 2, 3)))  # no prompt: refused

    out = outbox / LATIN1
    alive_until(vidrop, lambda: (out / f"{LATIN1}.json").exists(), 120, what="the manifest under the same bytes")
    manifest = read_json(out / f"{LATIN1}.json")
    assert manifest["state"] == "done"
    # The name shown with backslash escapes, and the exact bytes as hex beside it.
    assert manifest["input"]["path"] == "caf\\xe9/caf\\xe9.png"
    assert bytes.fromhex(manifest["input"]["path_hex"]) == b"caf\xe9/caf\xe9.png"
    assert (out / f"{LATIN1}.mp4").stat().st_size > 0 and (out / f"{LATIN1}.jpg").exists()
    line = job_lines(out)[-1]
    assert line["state"] == "done" and line["input"] == "caf\\xe9/caf\\xe9.png"
    assert bytes.fromhex(line["input_hex"]) == b"caf\xe9/caf\xe9.png"

    error_file = outbox / f"{LATIN1}-lonely.error.json"
    alive_until(vidrop, error_file.exists, 60, what="the refusal's error file")
    assert set(read_json(error_file)) >= {"error", "what_to_do", "detail"}
    finished = vidrop.wait_event("job_finished", count=2)
    assert {event["input"] for event in finished} == {"caf\\xe9/caf\\xe9.png", "caf\\xe9-lonely.png"}
    assert {bytes.fromhex(event["input_hex"]) for event in finished} == {b"caf\xe9/caf\xe9.png", b"caf\xe9-lonely.png"}
    alive_until(
        vidrop,
        lambda: (outbox / LATIN1 / "_status.json").exists() and (outbox / "index.html").exists(),
        30,
        what="the gallery",
    )
    status = read_json(outbox / LATIN1 / "_status.json")
    assert status["folder"] == "caf\\xe9" and status["jobs"][0]["name"].startswith("caf\\xe9")
    assert vidrop.process.poll() is None
    assert not vidrop.events_named("heartbeat_failed"), vidrop.log_text()

    # A restart reads the same names back from the ledger: nothing runs again, nothing crashes.
    assert vidrop.stop() == 0
    again = start_vidrop(env)
    again.wait_event("daemon_ready")
    drop(inbox / "after.json", sidecar())
    drop(inbox / "after.png", image_bytes(tmp_path, "after", (9, 9, 9)))
    alive_until(again, lambda: (outbox / "after.json").exists(), 120, what="a job after the restart")
    assert [event["input"] for event in again.events_named("job_queued")] == ["after.png"]
    assert again.stop() == 0


def test_a_long_legal_name_is_processed_under_a_name_that_fits(folders, demo_models, start_vidrop, tmp_path):
    inbox, outbox = folders["inbox"], folders["outbox"]
    env = vidrop_env(folders, demo_models["ltx"])
    vidrop = start_vidrop(env)
    vidrop.wait_event("daemon_ready")

    stem = "l" * 230
    accented = "é" * 124  # 248 bytes: shortened at a character boundary, never inside a character
    for name, colour in ((stem, (5, 5, 5)), (accented, (6, 6, 6))):
        drop(inbox / "ln" / f"{name}.json", sidecar(seeds=[1, 2]) if name == stem else sidecar())
        drop(inbox / "ln" / f"{name}.png", image_bytes(tmp_path, name, colour))
    drop(inbox / "ln" / ("m" * 240 + ".png"), image_bytes(tmp_path, "m", (7, 7, 7)))  # no prompt: refused

    out = outbox / "ln"
    alive_until(vidrop, lambda: len(job_lines(out)) >= 4, 180, what="four finished jobs")
    lines = {line["input"]: line for line in job_lines(out)}
    assert {line["state"] for line in lines.values()} == {"done", "failed"}
    names = sorted(path.name for path in out.iterdir())
    assert all(len(os.fsencode(name)) <= 255 for name in names)
    manifests = [
        read_json(out / name)
        for name in names
        if name.endswith(".json") and ".error." not in name and not name.startswith("_")
    ]
    assert sorted(manifest["input"]["path"] for manifest in manifests) == sorted(
        [f"ln/{stem}.png", f"ln/{stem}.png", f"ln/{accented}.png"]
    )
    for manifest in manifests:
        for output in manifest["outputs"].values():
            assert (out / output).exists()
    videos = [name for name in names if name.endswith(".mp4")]
    assert len(videos) == 3 and len(set(videos)) == 3
    assert all(name.startswith("é" * 10) for name in videos if name.startswith("é"))
    errors = [name for name in names if name.endswith(".error.json")]
    assert len(errors) == 1 and read_json(out / errors[0])["input"] == "ln/" + "m" * 240 + ".png"
    assert vidrop.process.poll() is None
    assert vidrop.stop() == 0


def test_inputs_named_like_outputs_get_their_own_names(folders, demo_models, start_vidrop, tmp_path):
    inbox, outbox = folders["inbox"], folders["outbox"]
    vidrop = start_vidrop(vidrop_env(folders, demo_models["ltx"]))
    vidrop.wait_event("daemon_ready")

    drop(inbox / "button.png", image_bytes(tmp_path, "button", (1, 1, 1)))  # no prompt: button.error.json
    for stem, colour in (
        ("button.error", (2, 2, 2)),
        ("field.error", (3, 3, 3)),
        ("x.preview", (4, 4, 4)),
        ("_status", (5, 5, 5)),
        ("index", (6, 6, 6)),
        ("jobs", (7, 7, 7)),
    ):
        drop(inbox / f"{stem}.json", sidecar(format="webp") if stem == "x.preview" else sidecar())
        drop(inbox / f"{stem}.png", image_bytes(tmp_path, stem, colour))
    drop(inbox / "x.json", sidecar())
    drop(inbox / "x.png", image_bytes(tmp_path, "x", (8, 8, 8)))
    # look.png beside look.jpg makes look_png.*, which is also what an input look_png.png would be called.
    drop(inbox / "look.json", sidecar())
    drop(inbox / "look.jpg", image_bytes(tmp_path, "look.jpg", (9, 9, 9)))
    drop(inbox / "look.png", image_bytes(tmp_path, "look.png", (10, 10, 10)))
    drop(inbox / "look_png.json", sidecar())
    drop(inbox / "look_png.png", image_bytes(tmp_path, "look_png", (11, 11, 11)))

    alive_until(vidrop, lambda: len(job_lines(outbox)) >= 11, 240, what="eleven finished jobs")
    lines = {line["input"]: line for line in job_lines(outbox)}
    assert lines["button.png"]["state"] == "failed"
    assert read_json(outbox / "button.error.json")["input"] == "button.png"
    for name in (
        "button.error.png",
        "field.error.png",
        "x.preview.png",
        "_status.png",
        "look.png",
        "look.jpg",
        "look_png.png",
        "x.png",
    ):
        line = lines[name]
        assert line["state"] == "done", line
        manifest = read_json(outbox / line["outputs"]["manifest"])
        assert manifest["state"] == "done" and manifest["input"]["path"] == name, manifest
        for output in manifest["outputs"].values():
            assert (outbox / output).exists()
    assert read_json(outbox / "x.json")["input"]["path"] == "x.png"
    assert read_json(outbox / "x.json")["outputs"]["preview"] == "x.preview.webp"
    videos = [line["outputs"]["video"] for line in lines.values() if line["state"] == "done"]
    assert len(set(videos)) == len(videos) == 10
    alive_until(
        vidrop,
        lambda: (outbox / "_status.json").exists() and read_json(outbox / "_status.json")["counts"]["done"] == 10,
        30,
        what="the gallery's status file",
    )
    assert read_json(outbox / "_status.json")["version"] == 1
    assert vidrop.process.poll() is None
    assert vidrop.stop() == 0


# -- a seeded stream of generated names and contents ------------------------------------------------------

SEED = int(os.environ.get("VIDROP_NAMES_SEED", "1515"))
COUNT = 24
OUTPUT_LIKE = [
    "button.error",
    "x.preview",
    "_status",
    "index",
    "jobs",
    "page-1",
    "look_png",
    "shot_json",
    "_STATUS",
    "a.error_png",
]


def generated_stem(rng: random.Random) -> bytes:
    """A stem (bytes) of one of the kinds real shares hold."""
    kind = rng.choice(
        ["bytes", "latin1", "spaces", "newline", "dash", "long", "long_utf8", "output_like", "nfc", "nfd"]
    )
    if kind == "bytes":  # anything but "/" and NUL, often not UTF-8
        return bytes(rng.choice([b for b in range(1, 256) if b != 0x2F]) for _ in range(rng.randint(1, 40)))
    if kind == "latin1":
        return rng.choice(["café", "Ärger", "façade", "naïve résumé"]).encode("latin-1")
    if kind == "spaces":
        return rng.choice([" leading", "trailing ", "two  spaces", " "]).encode()
    if kind == "newline":
        return b"two\nlines\r"
    if kind == "dash":
        return rng.choice([b"-rf", b"--help", b"-"])
    if kind == "long":  # up to the most a name with ".json" may have
        return bytes(rng.choice(b"abcxyz_-") for _ in range(rng.randint(200, 250)))
    if kind == "long_utf8":
        return ("é" * rng.randint(100, 125)).encode()
    if kind == "output_like":
        return rng.choice(OUTPUT_LIKE).encode()
    word = rng.choice(["café", "Ångström", "crème brûlée"])
    return unicodedata.normalize("NFC" if kind == "nfc" else "NFD", word).encode()


def generated_content(rng: random.Random, tmp_path: Path, index: int) -> tuple[str, bytes]:
    kind = rng.choices(["image", "junk", "empty"], weights=[3, 1, 1])[0]
    if kind == "image":
        return kind, image_bytes(tmp_path, f"gen{index}", ((index * 37) % 256, (index * 91) % 256, index % 256))
    if kind == "junk":
        return kind, bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    return kind, b""


def as_bytes(document: dict, key: str) -> bytes:
    """A name from a document vidrop wrote: the exact bytes beside it, or the text itself."""
    hexed = document.get(f"{key}_hex")
    return bytes.fromhex(hexed) if hexed is not None else document[key].encode()


def test_generated_names_and_contents_each_get_exactly_one_outcome(folders, demo_models, start_vidrop, tmp_path):
    from vidrop.config.settings import DEFAULT_IGNORE
    from vidrop.daemon.intake.readiness import JunkFilter

    is_junk = JunkFilter(DEFAULT_IGNORE)
    rng = random.Random(SEED)
    inbox, outbox = folders["inbox"], folders["outbox"]
    env = vidrop_env(folders, demo_models["ltx"])
    vidrop = start_vidrop(env)
    vidrop.wait_event("daemon_ready")

    folder_names = [b"", b"caf\xe9", "Ärger".encode("latin-1") + b" -x", b"\xff\xfe"]
    inputs: dict[bytes, str] = {}  # relative path (bytes) → what its content is
    while len(inputs) < COUNT:
        folder = rng.choice(folder_names)
        name = generated_stem(rng) + rng.choice([b".png", b".png", b".PNG"])
        relative = folder + b"/" + name if folder else name
        stem = name.rsplit(b".", 1)[0]
        if (
            relative in inputs
            or is_junk(os.fsdecode(name))
            or stem in (b".", b"..")
            or any(key.rsplit(b".", 1)[0].lower() == relative.rsplit(b".", 1)[0].lower() for key in inputs)
        ):
            continue  # junk is rightly never taken; one image per stem, so each has its own sidecar
        kind, content = generated_content(rng, tmp_path, len(inputs))
        path = inbox / os.fsdecode(relative)
        if rng.random() < 0.7:
            drop(path.with_name(os.fsdecode(stem + b".json")), sidecar())
        drop(path, content)
        inputs[relative] = kind

    def outcomes() -> dict[bytes, list[dict]]:
        found: dict[bytes, list[dict]] = {}
        for folder in folder_names:
            for line in job_lines(outbox / os.fsdecode(folder)):
                found.setdefault(as_bytes(line, "input"), []).append(line)
        return found

    alive_until(
        vidrop,
        lambda: outcomes().keys() >= inputs.keys(),
        240,
        what=f"an outcome for each of {COUNT} generated inputs (seed {SEED})",
    )
    found = outcomes()
    assert found.keys() == inputs.keys(), f"seed {SEED}"
    assert {lines[0]["state"] for lines in found.values()} == {"done", "failed"}
    written: set[bytes] = set()
    for relative, lines in found.items():
        assert len(lines) == 1, (relative, lines)
        line = lines[0]
        folder = outbox / os.fsdecode(relative.rpartition(b"/")[0])
        if inputs[relative] != "image":
            assert line["state"] == "failed", (relative, line)
        if line["state"] == "done":
            manifest = read_json(folder / os.fsdecode(as_bytes(line["outputs"], "manifest")))
            assert as_bytes(manifest["input"], "path") == relative, f"seed {SEED}: another input's manifest"
            files = [as_bytes(line["outputs"], key) for key in ("video", "thumbnail", "preview", "manifest")]
        else:
            error = read_json(folder / os.fsdecode(as_bytes(line, "error_file")))
            assert as_bytes(error, "input") == relative and set(error) >= {"error", "what_to_do", "detail"}
            files = [as_bytes(line, "error_file")]
        for name in files:
            assert (folder / os.fsdecode(name)).is_file()
            assert folder / os.fsdecode(name) not in written, f"seed {SEED}: two inputs wrote {name!r}"
            written.add(folder / os.fsdecode(name))
    for path in outbox.rglob("*"):
        assert len(os.fsencode(path.name)) <= 255
    # Each outcome is told in the log too (just after its jobs.jsonl line).
    alive_until(
        vidrop,
        lambda: {as_bytes(event, "input") for event in vidrop.events_named("job_finished")} == inputs.keys(),
        30,
        what="a job_finished event for each input",
    )
    # Every event is JSON that any reader takes; names in it are escaped.
    assert all(
        not any("\udc80" <= char <= "\udcff" for char in json.dumps(event, ensure_ascii=False))
        for event in vidrop.events
    )
    assert vidrop.stop() == 0
    assert not [path for path in outbox.rglob(".vidrop-tmp-*")]  # once stopped: the gallery writes until then

    # After a restart the same names are read back from the ledger: nothing runs again.
    again = start_vidrop(env)
    again.wait_event("daemon_ready")
    again.wait_event("intake_started")
    drop(inbox / "last.json", sidecar())
    drop(inbox / "last.png", image_bytes(tmp_path, "last", (3, 33, 99)))
    alive_until(again, lambda: (outbox / "last.json").exists(), 120, what="a job after the restart")
    assert [event["input"] for event in again.events_named("job_queued")] == ["last.png"]
    assert again.stop() == 0
