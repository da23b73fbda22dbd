"""Complete files, pairing and formats against real producers: preallocating writers, a real Samba share
(smbd on a private port, written by smbprotocol the way Finder and Windows copy, and by smbclient), clocks
that disagree, Windows-cased names, formats from phones and design tools, and an inbox that is a symlink
or a mount point. Each test works in its own inbox folder of one shared `vidrop run` unless it needs its own."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import (
    VidropProcess,
    drop,
    free_port,
    job_lines,
    ledger_jobs,
    make_image,
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

    def jobs_for(self, relative: str):
        return [job for job in ledger_jobs(self.state) if job.input == relative]

    def done_lines(self, relative: str):
        folder = self.outbox / Path(relative).parent
        return [line for line in job_lines(folder) if line["input"] == relative and line["state"] == "done"]

    def reacted_to(self, relative: str) -> bool:
        """The daemon has looked at the file and decided: it queued a job, or it waits for the rest."""
        path = str(self.inbox / relative)
        return any(
            event.get("input") in (relative, path)
            for event in self.vidrop.events_named("job_queued") + self.vidrop.events_named("input_still_arriving")
        )


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, demo_models):
    """One daemon with on_success = delete: a video made from a half-written file would delete the whole one."""
    root = tmp_path_factory.mktemp("producers")
    folders = {name: root / name for name in ("inbox", "outbox", "state")}
    for path in folders.values():
        path.mkdir()
    env = vidrop_env(
        folders,
        demo_models["ltx"],
        VIDROP_INTAKE__WATCH="events",
        VIDROP_INTAKE__SETTLE_SECONDS="1.0",
        VIDROP_INTAKE__PAIRING_SECONDS="1.5",
        VIDROP_INTAKE__DECODE_GRACE_SECONDS="5",
        VIDROP_INTAKE__ON_SUCCESS="delete",
    )
    vidrop = VidropProcess(env)
    vidrop.wait_event("daemon_ready")
    yield Running(vidrop, folders["inbox"], folders["outbox"], folders["state"])
    assert vidrop.stop() == 0


def noisy_image(fmt: str, size=(192, 128), seed=0, **options) -> bytes:
    """A photo-like image (noise compresses badly, so it is big enough to be caught half-written)."""
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# A producer that sets the final size first, writes 40 %, waits for a line on stdin, then writes the rest:
# what SMB clients, Windows Explorer and many copy tools do. `reopen`: it closes the file in between.
PREALLOCATING_WRITER = textwrap.dedent("""
    import os, sys
    target, source, how = sys.argv[1:4]
    data = open(source, "rb").read()
    cut = len(data) * 4 // 10
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    (os.posix_fallocate(fd, 0, len(data)) if how.startswith("fallocate") else os.ftruncate(fd, len(data)))
    os.write(fd, data[:cut])
    os.fsync(fd)
    if how.endswith("reopen"):
        os.close(fd)
    print("partial", flush=True)
    sys.stdin.readline()
    if how.endswith("reopen"):
        fd = os.open(target, os.O_WRONLY)
    os.lseek(fd, cut, os.SEEK_SET)
    for start in range(cut, len(data), 4096):
        os.write(fd, data[start:start + 4096])
    os.close(fd)
""")


@pytest.mark.parametrize(
    "fmt,suffix,how",
    [("JPEG", "jpg", "ftruncate-held"), ("JPEG", "jpg", "fallocate-reopen"), ("WEBP", "webp", "ftruncate-reopen")],
)
def test_a_preallocated_file_is_taken_once_it_is_complete(daemon, tmp_path, fmt, suffix, how):
    folder = f"prealloc-{suffix}-{how}"
    data = noisy_image(fmt, seed=len(folder))
    source = tmp_path / f"source.{suffix}"
    source.write_bytes(data)
    drop(daemon.inbox / folder / "shot.json", sidecar())
    relative = f"{folder}/shot.{suffix}"
    writer = subprocess.Popen(
        [sys.executable, "-c", PREALLOCATING_WRITER, str(daemon.inbox / relative), str(source), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "partial"
        wait_for(lambda: daemon.reacted_to(relative), 30, what="the daemon's look at the half-written file")
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.wait(timeout=30) == 0
    finally:
        writer.kill()
        writer.wait()
        writer.stdin.close()
        writer.stdout.close()
    wait_for(lambda: daemon.done_lines(relative), 90, what="the video of the preallocated file")
    jobs = daemon.jobs_for(relative)
    assert [job.input_sha256 for job in jobs] == [sha(data)], "made from a half-written file"
    arriving = [e for e in daemon.vidrop.events_named("input_still_arriving") if e["input"].endswith(relative)]
    assert arriving, "the wait is not in the log"


@pytest.fixture
def samba(daemon, tmp_path):
    """A private smbd on a high port sharing the daemon's inbox folder `smb` as //127.0.0.1/inbox."""
    smbd = shutil.which("smbd") or "/usr/sbin/smbd"
    if not os.path.exists(smbd) or shutil.which("smbpasswd") is None or shutil.which("smbclient") is None:
        pytest.skip("Samba (smbd, smbpasswd, smbclient) is not installed: make system-packages installs it")
    if os.geteuid() != 0:
        pytest.skip("smbd needs root to serve files as the logged-in user")
    share = daemon.inbox / "smb"
    share.mkdir(exist_ok=True)
    port = free_port()
    root = tmp_path / "samba"
    for name in ("run", "lock", "state", "cache", "private", "log"):
        (root / name).mkdir(parents=True)
    conf = root / "smb.conf"
    conf.write_text(
        textwrap.dedent(f"""
        [global]
          server role = standalone server
          smb ports = {port}
          bind interfaces only = yes
          interfaces = lo
          disable netbios = yes
          server min protocol = SMB2
          pid directory = {root}/run
          lock directory = {root}/lock
          state directory = {root}/state
          cache directory = {root}/cache
          private dir = {root}/private
          ncalrpc dir = {root}/run/ncalrpc
          passdb backend = tdbsam:{root}/private/passdb.tdb
          log file = {root}/log/smbd.log
          load printers = no
          printing = bsd
          printcap name = /dev/null
          disable spoolss = yes
        [inbox]
          path = {share}
          read only = no
    """)
    )
    subprocess.run(
        ["smbpasswd", "-c", str(conf), "-s", "-a", "root"], input="pw\npw\n", text=True, check=True, capture_output=True
    )
    # Its own session: smbd signals its whole process group when it stops, which must not be pytest's.
    server = subprocess.Popen(
        [smbd, "--foreground", "--no-process-group", "-s", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def listening():
            if server.poll() is not None:
                logs = " ".join(path.read_text(errors="replace")[-300:] for path in (root / "log").glob("*"))
                pytest.skip(f"smbd cannot run here (exit {server.returncode}): {logs}")
            return (
                subprocess.run(
                    ["smbclient", "//127.0.0.1/inbox", "-p", str(port), "-U", "root%pw", "-c", "ls"],
                    capture_output=True,
                ).returncode
                == 0
            )

        wait_for(listening, 30, interval=0.2, what="smbd to listen")
        yield {"port": port, "share": share, "folder": "smb"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_a_finder_style_copy_through_samba_becomes_one_job(daemon, samba, tmp_path):
    """Finder and Windows set the file's size first (SMB2 SET_INFO end-of-file), then write it in pieces."""
    smbclient = pytest.importorskip("smbclient", reason="smbprotocol (a test dependency) is not installed")
    data = noisy_image("JPEG", size=(256, 192), seed=7)
    relative = f"{samba['folder']}/finder.jpg"
    drop(daemon.inbox / samba["folder"] / "finder.json", sidecar())
    smbclient.register_session("127.0.0.1", username="root", password="pw", port=samba["port"])
    try:
        with smbclient.open_file(r"\\127.0.0.1\inbox\finder.jpg", mode="wb", port=samba["port"]) as remote:
            remote.truncate(len(data))
            cut = len(data) // 3
            remote.write(data[:cut])
            remote.flush()
            assert (daemon.inbox / relative).stat().st_size == len(data)  # full size, mostly zeros
            wait_for(lambda: daemon.reacted_to(relative), 30, what="the daemon's look at the half-copied file")
            for start in range(cut, len(data), 16384):
                remote.write(data[start : start + 16384])
                remote.flush()
    finally:
        smbclient.reset_connection_cache()
    wait_for(lambda: daemon.done_lines(relative), 90, what="the video of the file copied over SMB")
    assert [job.input_sha256 for job in daemon.jobs_for(relative)] == [sha(data)]
    assert any(
        "smbd" in event.get("writer", "")
        for event in daemon.vidrop.events_named("input_still_arriving")
        if event["input"].endswith(relative)
    ), "smbd holding the file open was not seen"


def test_a_slow_smbclient_upload_is_one_job_whatever_the_decode_grace(daemon, samba, tmp_path):
    """smbclient reads its source to the end before it writes: on the share the file stays empty, held open by
    smbd, for as long as the upload takes. Here that is longer than the decode grace (5 s): a file that some
    process still holds open for writing is waited for however long it takes, never refused as broken."""
    data = noisy_image("PNG", size=(256, 192), seed=8)
    (tmp_path / "put.json").write_text(sidecar())
    source = tmp_path / "upload"
    os.mkfifo(source)  # the slow side of the upload, fed below
    relative = f"{samba['folder']}/put.png"
    command = f"lcd {tmp_path}; put put.json; put upload put.png"
    client = subprocess.Popen(
        ["smbclient", "//127.0.0.1/inbox", "-p", str(samba["port"]), "-U", "root%pw", "-c", command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with open(source, "wb") as upload:
            upload.write(data[: len(data) // 2])
            upload.flush()
            wait_for(lambda: (daemon.inbox / relative).exists(), 30, what="smbd to create the file")
            time.sleep(7)  # the producer is slow: longer than the daemon's decode grace
            upload.write(data[len(data) // 2 :])
        assert client.wait(timeout=60) == 0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    wait_for(lambda: daemon.done_lines(relative), 90, what="the video of the file put with smbclient")
    assert [job.input_sha256 for job in daemon.jobs_for(relative)] == [sha(data)]
    assert [line["state"] for line in job_lines(daemon.outbox / samba["folder"]) if line["input"] == relative] == [
        "done"
    ]
    assert any(
        "smbd" in event.get("writer", "")
        for event in daemon.vidrop.events_named("input_still_arriving")
        if event["input"].endswith(relative)
    ), "smbd holding the file open was not seen"


def test_file_times_in_the_future_do_not_delay_anything(daemon, tmp_path):
    folder = daemon.inbox / "ahead"
    drop(folder / "_defaults.json", sidecar())
    ahead = time.time() + 3 * 3600  # a camera or server whose clock runs three hours ahead, kept by rsync -a
    image = make_image(tmp_path / "a.png", color=(9, 99, 199))
    shutil.copy(image, tmp_path / "cam.png")
    os.utime(tmp_path / "cam.png", (ahead, ahead))
    (tmp_path / "broken.png").write_bytes(image.read_bytes()[:60])
    os.utime(tmp_path / "broken.png", (ahead, ahead))
    subprocess.run(["rsync", "-a", f"{tmp_path}/cam.png", f"{tmp_path}/broken.png", f"{folder}/"], check=True)
    assert (folder / "cam.png").stat().st_mtime > time.time() + 3600
    wait_for(lambda: daemon.done_lines("ahead/cam.png"), 60, what="the video of the image dated in the future")
    error = daemon.outbox / "ahead" / "broken.error.json"
    wait_for(error.exists, 60, what="the error file of the damaged image dated in the future")
    assert "not an image" in json.loads(error.read_text())["error"]


def test_sidecars_pair_whatever_the_case_of_their_extensions(daemon, tmp_path):
    folder = daemon.inbox / "case"
    for index, (image, prompt) in enumerate(
        [("SHOT.PNG", "SHOT.JSON"), ("Banner.png", "Banner.Json"), ("logo.PNG", "logo.json")]
    ):
        drop(folder / prompt, sidecar(seed=index))
        drop(folder / image, make_image(tmp_path / f"{index}.png", color=(index * 60, 20, 90)).read_bytes())
    drop(folder / "both.json", sidecar())
    drop(folder / "both.JSON", sidecar(seed=5))
    drop(folder / "both.png", make_image(tmp_path / "both.png", color=(1, 200, 1)).read_bytes())
    for name in ("SHOT.PNG", "Banner.png", "logo.PNG"):
        wait_for(lambda: daemon.done_lines(f"case/{name}"), 90, what=f"the video of {name}")
    error = daemon.outbox / "case" / "both.error.json"
    wait_for(error.exists, 60, what="the error file of an image with two prompt files")
    refusal = json.loads(error.read_text())
    assert "more than one prompt file" in refusal["error"]
    assert "both.JSON" in refusal["what_to_do"] and "both.json" in refusal["what_to_do"]
    assert not any(
        line["state"] == "failed" for line in job_lines(daemon.outbox / "case") if line["input"] != "case/both.png"
    )


def test_a_sidecar_still_being_written_is_waited_for(daemon, tmp_path):
    folder = daemon.inbox / "halfjson"
    drop(folder / "slow.png", make_image(tmp_path / "slow.png", color=(77, 7, 177)).read_bytes())
    text = sidecar(seed=12)
    (folder / "slow.json").write_text(text[: len(text) // 2])  # an SMB write that has not finished
    relative = "halfjson/slow.png"
    wait_for(
        lambda: (
            daemon.vidrop.events_named("input_still_arriving")
            and any(
                e["input"].endswith("halfjson/slow.json") for e in daemon.vidrop.events_named("input_still_arriving")
            )
            or (daemon.outbox / "halfjson" / "slow.error.json").exists()
        ),
        30,
        what="the daemon's look at the sidecar",
    )
    with open(folder / "slow.json", "a") as handle:
        handle.write(text[len(text) // 2 :])
    wait_for(lambda: daemon.done_lines(relative), 90, what="the video once the sidecar is complete")
    assert [line["state"] for line in job_lines(daemon.outbox / "halfjson")] == ["done"]
    assert not (daemon.outbox / "halfjson" / "slow.error.json").exists()


def psd_bytes() -> bytes:
    """The start of a Photoshop file (what matters is that it is one, not what it shows)."""
    return b"8BPS\x00\x01" + bytes(6) + b"\x00\x03" + (64).to_bytes(4, "big") * 2 + b"\x00\x08\x00\x03" + bytes(64)


def test_phone_and_animated_formats_are_taken_and_others_refused_by_name(daemon, tmp_path):
    pytest.importorskip("pillow_heif").register_heif_opener()  # to write the HEIC file here
    folder = daemon.inbox / "formats"
    still = Image.new("RGB", (96, 64), (250, 120, 10))
    frames = [Image.new("RGB", (96, 64), (index * 80, 40, 200)) for index in range(3)]
    files = {}
    for name, fmt in (("phone.heic", "HEIF"), ("web.avif", "AVIF")):
        buffer = io.BytesIO()
        still.save(buffer, fmt)
        files[name] = buffer.getvalue()
    for name, fmt in (("loop.gif", "GIF"), ("sticker.webp", "WEBP")):
        buffer = io.BytesIO()
        frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
        files[name] = buffer.getvalue()
    buffer = io.BytesIO()
    still.save(buffer, "JPEG")
    files.update(
        {
            "layers.psd": psd_bytes(),
            "raw.CR2": b"II*\x00\x10\x00\x00\x00CR\x02\x00" + bytes(64),
            "logo.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>',
            "scan": buffer.getvalue(),
        }
    )  # a JPEG saved without an extension
    for name, data in files.items():
        drop(folder / f"{name.split('.')[0]}.json", sidecar())
        drop(folder / name, data)

    for name in ("phone.heic", "web.avif", "loop.gif", "sticker.webp"):
        wait_for(lambda: daemon.done_lines(f"formats/{name}"), 120, what=f"the video of {name}")
    for name in ("loop.gif", "sticker.webp"):
        stem = name.split(".")[0]
        manifest = next(p for p in (daemon.outbox / "formats").glob(f"{stem}*.json") if "error" not in p.name)
        adjustment = [a for a in json.loads(manifest.read_text())["adjustments"] if a["field"] == "image"]
        assert adjustment and adjustment[0]["frames_in_file"] == 3 and adjustment[0]["used"] == "first frame"
    for stem, format_name in (
        ("layers", "Photoshop (PSD)"),
        ("raw", "camera RAW (CR2)"),
        ("logo", "SVG"),
        ("scan", "JPEG"),
    ):
        error = daemon.outbox / "formats" / f"{stem}.error.json"
        wait_for(error.exists, 60, what=f"the error file for {stem}")
        refusal = json.loads(error.read_text())
        assert format_name in refusal["error"] + refusal["detail"] and "PNG or JPEG" in refusal["what_to_do"]
    text_only = [
        line
        for line in job_lines(daemon.outbox / "formats")
        if line["state"] == "done" and line["input"].endswith(".json")
    ]
    assert not text_only, "a prompt beside an unreadable image became a video without it"


@pytest.fixture(params=["events", "polling"])
def linked_inbox(request, tmp_path, demo_models):
    """The inbox and outbox configured as symbolic links to the real folders (/srv/vidrop/inbox →
    /mnt/share/inbox), with a reconcile far away so that only events or polling can find new files."""
    folders = {"inbox": tmp_path / "inbox", "outbox": tmp_path / "outbox", "state": tmp_path / "state"}
    for name in ("inbox", "outbox"):
        (tmp_path / "share" / name).mkdir(parents=True)
        folders[name].symlink_to(tmp_path / "share" / name)
    folders["state"].mkdir()
    env = vidrop_env(
        folders, demo_models["ltx"], VIDROP_INTAKE__WATCH=request.param, VIDROP_INTAKE__RECONCILE_SECONDS="3600"
    )
    vidrop = VidropProcess(env)
    try:
        vidrop.wait_event("daemon_ready")
        yield vidrop, folders["inbox"], folders["outbox"], tmp_path
    finally:
        assert vidrop.stop() == 0


def _new_files_folders_and_moved_folders_are_seen(vidrop, inbox, outbox, tmp_path):
    drop(inbox / "top.json", sidecar())
    drop(inbox / "top.png", make_image(tmp_path / "t.png", color=(5, 50, 150)).read_bytes())
    drop(inbox / "fresh" / "new.json", sidecar())
    drop(inbox / "fresh" / "new.png", make_image(tmp_path / "n.png", color=(50, 5, 150)).read_bytes())
    outside = tmp_path / "elsewhere" / "moved"
    make_image(outside / "in.png", color=(150, 50, 5))
    (outside / "in.json").write_text(sidecar())
    shutil.move(outside, inbox / "moved")  # a rename where it can, else what mv does across filesystems
    for folder, name in ((outbox, "top.png"), (outbox / "fresh", "fresh/new.png"), (outbox / "moved", "moved/in.png")):
        wait_for(
            lambda: any(line["input"] == name and line["state"] == "done" for line in job_lines(folder)),
            90,
            what=f"the video of {name} (not found before the next reconcile?)",
        )


def test_an_inbox_that_is_a_symlink_sees_new_files_and_folders(linked_inbox):
    _new_files_folders_and_moved_folders_are_seen(*linked_inbox)


@pytest.fixture(params=["events", "polling"])
def mounted_inbox(request, tmp_path, demo_models):
    """The inbox is a mount point of its own (a tmpfs)."""
    folders = {name: tmp_path / name for name in ("inbox", "outbox", "state")}
    for path in folders.values():
        path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "vidrop-test", str(folders["inbox"])], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        env = vidrop_env(
            folders, demo_models["ltx"], VIDROP_INTAKE__WATCH=request.param, VIDROP_INTAKE__RECONCILE_SECONDS="3600"
        )
        vidrop = VidropProcess(env)
        try:
            vidrop.wait_event("daemon_ready")
            yield vidrop, folders["inbox"], folders["outbox"], tmp_path
        finally:
            assert vidrop.stop() == 0
    finally:
        subprocess.run(["umount", str(folders["inbox"])], check=True)


def test_an_inbox_that_is_a_mount_point_sees_new_files_and_folders(mounted_inbox):
    _new_files_folders_and_moved_folders_are_seen(*mounted_inbox)
