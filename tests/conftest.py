"""Shared fixtures: tiny real models, a real `vidrop` process, and a guard against leaks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from tests.harness.vidrop_test_run import Faults

REPO = Path(__file__).resolve().parents[1]
VIDROP = Path(sys.executable).parent / "vidrop"
# The same command line with slow or hanging inputs injected (see its docstring); for tests that need faults.
HARNESS = REPO / "tests" / "harness" / "vidrop_test_run.py"


def wait_for(
    condition: Callable[[], object],
    timeout: float = 60.0,
    interval: float = 0.05,
    what: str = "",
    log: Callable[[], str] | None = None,
):
    """Poll a condition until it is truthy; fail the test with `what` (and the process's last log lines, if
    given) after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            told = f"; its last log lines:\n{log()}" if log is not None else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}{told}")
        time.sleep(interval)


class _DemoModels(dict):
    """Tiny random-weight pipelines written with save_pretrained, each built the first time a test asks for it."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> Path:
        from vidrop.pipeline.demo_model import write_demo_model

        self[name] = write_demo_model(self.root / name, name)
        return self[name]


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny demo models by name (`vidrop.pipeline.demo_model.BUILDERS`): ltx, i2vgen-xl, svd, cogvideox, wan, ..."""
    return _DemoModels(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def ltx_generator(demo_models):
    """The tiny LTX model loaded once through the production loader."""
    from vidrop.config.settings import LimitSettings
    from vidrop.pipeline.generate import VideoGenerator
    from vidrop.pipeline.loader import load_model

    loaded = load_model(str(demo_models["ltx"]), family="auto", device="cpu", dtype="auto", offline=True)
    return VideoGenerator(loaded, fit="crop", limits=LimitSettings())


def make_image(path: Path, size=(96, 64), color=(200, 40, 40), mode="RGB") -> Path:
    """Write a small real image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def drop(path: Path, data: bytes | str) -> Path:
    """Drop a file the way a careful tool does: write a temporary dot-name, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.part")
    temporary.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(temporary, path)
    return path


TINY = {"width": 64, "height": 64, "num_frames": 9, "steps": 2, "fps": 8}


def sidecar(**fields) -> str:
    """A sidecar for the tiny model."""
    return json.dumps({"prompt": "a small red square", **TINY, **fields})


def drop_job(inbox: Path, name: str, **fields) -> Path:
    """Drop NAME.json then NAME.png; each name gets its own image colour, so no two jobs share content
    (identical content would reuse an earlier job's results instead of running)."""
    digest = zlib.crc32(name.encode())
    colour = (digest & 255, (digest >> 8) & 255, (digest >> 16) & 255)
    drop(inbox / f"{name}.json", sidecar(**fields))
    image = make_image(inbox.parent / "sources" / f"{name}.png", color=colour)
    return drop(inbox / f"{name}.png", image.read_bytes())


@pytest.fixture
def folders(tmp_path) -> dict[str, Path]:
    """An inbox, outbox and state directory in a temporary folder."""
    paths = {name: tmp_path / name for name in ("inbox", "outbox", "state")}
    for path in paths.values():
        path.mkdir()
    return paths


def vidrop_env(folders: dict[str, Path], model: Path, **extra: str) -> dict[str, str]:
    """The environment for a `vidrop` process on these folders and this model."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("VIDROP_")}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "VIDROP_INBOX": str(folders["inbox"]),
            "VIDROP_OUTBOX": str(folders["outbox"]),
            "VIDROP_STATE_DIR": str(folders["state"]),
            "VIDROP_PIPELINE__MODEL": str(model),
            "VIDROP_PIPELINE__DEVICE": "cpu",
            "VIDROP_LOG_FORMAT": "json",
            "VIDROP_INTAKE__SETTLE_SECONDS": "0.3",
            "VIDROP_INTAKE__PAIRING_SECONDS": "2",
            "VIDROP_INTAKE__TICK_SECONDS": "0.1",
            "VIDROP_INTAKE__DECODE_GRACE_SECONDS": "1",
            "VIDROP_INTAKE__POLL_SECONDS": "0.5",
            "VIDROP_INTAKE__RECONCILE_SECONDS": "10",
            "OMP_NUM_THREADS": "1",
        }
    )
    env.update(extra)
    return env


def vidrop_command(env: dict[str, str], faults: Faults | None = None) -> tuple[list[str], dict[str, str]]:
    """The plain `vidrop` entry and env; with faults, the test harness and its variables instead."""
    if faults is None:
        return [str(VIDROP)], env
    return [sys.executable, str(HARNESS)], {**env, **faults.environment()}


class VidropProcess:
    """A real `vidrop run` process whose JSON log lines are collected from stderr."""

    def __init__(
        self,
        env: dict[str, str],
        args: tuple[str, ...] = ("run",),
        prefix: tuple[str, ...] = (),
        faults: Faults | None = None,
    ) -> None:
        # prefix: a command that execs vidrop in its own process (unshare, setpriv), so the PID stays vidrop's;
        # faults: run it through the test harness, which injects them (the PID is still vidrop's)
        command, env = vidrop_command(env, faults)
        self.process = subprocess.Popen(
            [*prefix, *command, *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.events: list[dict] = []
        self.other_lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True, name="vidrop-log-reader")
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            try:
                self.events.append(json.loads(line))
            except json.JSONDecodeError:
                self.other_lines.append(line)

    def events_named(self, name: str) -> list[dict]:
        return [event for event in list(self.events) if event.get("event") == name]

    def wait_event(self, name: str, timeout: float = 90.0, count: int = 1) -> list[dict]:
        def found():
            if self.process.poll() is not None and len(self.events_named(name)) < count:
                pytest.fail(f"vidrop exited with {self.process.returncode} before {name}: {self.log_text()}")
            return len(self.events_named(name)) >= count

        wait_for(found, timeout, what=f"log event {name} x{count}", log=self.log_text)
        return self.events_named(name)

    def log_text(self) -> str:
        return "\n".join(json.dumps(event) for event in self.events[-30:]) + "".join(self.other_lines[-30:])

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait, and SIGKILL only if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=10)
        self.process.stdout.close()
        return self.process.returncode


@pytest.fixture
def start_vidrop():
    """Start `vidrop` processes (with faults: through the test harness); every one is stopped (by PID) when the
    test ends."""
    started: list[VidropProcess] = []

    def start(env: dict[str, str], *args: str, faults: Faults | None = None) -> VidropProcess:
        process = VidropProcess(env, args or ("run",), faults=faults)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def ledger_jobs(state: Path) -> list:
    """Every job in a daemon's SQLite ledger (read while it runs: WAL allows it)."""
    from vidrop.daemon.ledger.sqlite import SqliteLedger

    ledger = SqliteLedger(state / "ledger.sqlite3")
    try:
        return ledger.jobs()
    finally:
        ledger.close()


def job_lines(outbox_folder: Path) -> list[dict]:
    """The parsed lines of a folder's jobs.jsonl."""
    path = outbox_folder / "jobs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_vidrop(
    env: dict[str, str], *args: str, timeout: float = 180, faults: Faults | None = None
) -> subprocess.CompletedProcess:
    """Run a `vidrop` command to completion (with faults: through the test harness)."""
    command, env = vidrop_command(env, faults)
    return subprocess.run([*command, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves threads or child processes running."""
    threads_before = set(threading.enumerate())
    children_before = set(_children())
    yield
    deadline = time.monotonic() + 10
    while True:
        leaked = [t for t in threading.enumerate() if t not in threads_before and t.is_alive() and not t.daemon]
        children = [pid for pid in _children() if pid not in children_before]
        if not leaked and not children:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"test leaked threads {leaked} or processes {children}")
        time.sleep(0.05)


def _children() -> list[int]:
    me = os.getpid()
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            children.append(int(entry.name))
    return children


def pytest_collection_modifyitems(config, items):
    """Tests marked `long` (soaks) run only when selected with `-m long`."""
    if "long" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="a soak test: select it with -m long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


POSTGRES_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


def _as_postgres(command: list[str]) -> list[str]:
    """As root, PostgreSQL refuses to run: drop to the `postgres` user (setpriv execs, so no extra process)."""
    if os.getuid() != 0:
        return command
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *command]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresCluster:
    """A throw-away PostgreSQL cluster: its URL, and pg_ctl to stop, start and restart it under a test."""

    def __init__(self, binaries: Path, root: Path, port: int) -> None:
        self.binaries, self.root, self.data, self.port = binaries, root, root / "data", port
        self.url = f"postgresql://vidrop@127.0.0.1:{port}"

    def pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        subprocess.run(
            _as_postgres(
                [
                    str(self.binaries / "pg_ctl"),
                    *args,
                    "-w",
                    "-t",
                    "120",
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.root / "log"),
                    "-o",
                    options,
                ]
            ),
            check=True,
            capture_output=True,
            timeout=180,
        )

    def start(self) -> None:
        self.pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        self.pg_ctl("restart", "-m", mode)


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throw-away PostgreSQL cluster in a temporary folder on a free local port; removed at the end."""
    import shutil
    import tempfile

    if not POSTGRES_BIN:
        pytest.skip("PostgreSQL is not installed (make test installs the Debian package `postgresql` as root)")
    root = Path(tempfile.mkdtemp(prefix="vidrop-pg-"))
    if os.getuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PostgresCluster(POSTGRES_BIN[-1].parent, root, free_port())
    try:
        subprocess.run(
            _as_postgres(
                [
                    str(cluster.binaries / "initdb"),
                    "-D",
                    str(cluster.data),
                    "-U",
                    "vidrop",
                    "-A",
                    "trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        cluster.start()
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(postgres_cluster) -> str:
    """The throw-away cluster's URL (without a database)."""
    return postgres_cluster.url


@pytest.fixture
def postgres_url(postgres_server, request):
    """A fresh, empty database on the throw-away cluster for one test."""
    import psycopg

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}"')
        db.execute(f'CREATE DATABASE "{name}"')
    yield f"{postgres_server}/{name}"
