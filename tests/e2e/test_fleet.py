"""kill -9 at random moments, several instances on one inbox: every input ends done exactly once.

The kill schedule comes from a seeded random generator, so a failure reproduces with the same seed.
Sizes are chosen for a 2-core CI machine; each `vidrop run` costs seconds to start (torch import and
model load), so kills are spread over the run rather than made after every job.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import imageio_ffmpeg
import pytest

from tests.conftest import VidropProcess, make_image, sidecar, vidrop_env, wait_for
from vidrop.daemon.ledger.base import JobState
from vidrop.daemon.outbox import TEMP_PREFIX

pytestmark = [pytest.mark.e2e, pytest.mark.fleet, pytest.mark.timeout(900)]

LEASE_SECONDS = "6"  # a killed holder's job is taken over this long after its last heartbeat


@dataclass
class Fleet:
    """Instances on one inbox; every process ever started, and which were killed."""

    env: dict[str, str]
    size: int
    processes: list[VidropProcess] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)

    def start(self) -> VidropProcess:
        self.processes.append(VidropProcess(self.env))
        return self.processes[-1]

    def alive(self) -> list[VidropProcess]:
        return [p for p in self.processes if p.process.poll() is None]

    def kill(self, process: VidropProcess) -> None:
        os.kill(process.process.pid, signal.SIGKILL)
        process.process.wait()
        process.stop()  # collects the last log lines, closes the pipe
        self.killed.add(id(process))

    def stop_all(self) -> None:
        """SIGTERM to every instance at once, then wait for each (each finishes its job first)."""
        for process in self.alive():
            process.process.send_signal(signal.SIGTERM)
        for process in self.processes:
            process.stop(timeout=180)


def fill_inbox(inbox: Path, count: int) -> list[str]:
    """count tiny image + sidecar pairs in a few sub-folders; return their inbox-relative names."""
    names = []
    for number in range(count):
        name = f"batch{number % 4}/shot{number:03}.png"
        make_image(inbox / name, size=(32, 32), color=(number % 256, 80, 160))
        (inbox / name).with_suffix(".json").write_text(sidecar())
        names.append(name)
    return names


def run_with_kills(fleet: Fleet, ledger, total: int, *, seed: int, kills: int) -> list[tuple[str, int]]:
    """Run until every job is done, killing a random instance (and starting a new one) at random moments."""
    rng = random.Random(seed)
    thresholds = sorted(rng.sample(range(3, total - 3), kills))
    schedule = []
    for _ in range(fleet.size):
        fleet.start()
    for threshold in thresholds:
        wait_for(lambda: ledger.counts()[JobState.DONE.value] >= threshold, 300, what=f"{threshold} jobs done")
        # Jitter, not synchronisation: it moves the kill to a random phase of the job under way.
        time.sleep(rng.uniform(0, 0.6))
        victim = rng.choice(fleet.alive())
        fleet.kill(victim)
        schedule.append(("after_jobs", threshold))
        replacement = fleet.start()
        if rng.random() < 0.3:  # sometimes kill the newcomer again while it imports or loads the model
            delay = rng.uniform(0.5, 6)
            time.sleep(delay)
            fleet.kill(replacement)
            schedule.append(("at_start", round(delay, 2)))
            fleet.start()
    wait_for(lambda: ledger.counts()[JobState.DONE.value] == total, 600, what="every job done")
    fleet.stop_all()
    return schedule


def frames_in(path: Path) -> int:
    reader = imageio_ffmpeg.read_frames(str(path))
    next(reader)
    return sum(1 for _ in reader)


def check_exactly_once(fleet: Fleet, ledger, outbox: Path, names: list[str]) -> None:
    """Ledger, outbox and the daemons' own counts agree: every input done once, nothing left over."""
    # The ledger: one row per input, all done, none still leased.
    jobs = ledger.jobs()
    assert sorted(job.input for job in jobs) == sorted(names)
    assert {job.state for job in jobs} == {JobState.DONE}
    assert all(job.lease_owner is None and job.lease_expires_at is None for job in jobs)
    by_id = {job.id: job for job in jobs}

    # The outbox: exactly one complete set per input, the seed fixed at admission, no temporaries or errors.
    leftovers = [p for p in outbox.rglob("*") if p.name.startswith(TEMP_PREFIX) or p.name.endswith(".error.json")]
    assert leftovers == []
    for job in jobs:
        stem = outbox / Path(job.input).with_suffix("")
        manifest = json.loads(stem.with_suffix(".json").read_text())
        assert manifest["job_id"] == job.id and manifest["parameters"]["seed"] == job.seed
        assert frames_in(stem.with_suffix(".mp4")) == 9 and stem.with_suffix(".jpg").stat().st_size > 0
    lines = [json.loads(line) for path in outbox.rglob("jobs.jsonl") for line in path.read_text().splitlines()]
    assert Counter(line["job_id"] for line in lines if line["state"] == "done") == Counter(list(by_id))

    # The daemons' counts: a job is generated again only when the process generating it was killed.
    completed = Counter()
    for process in fleet.processes:
        invoked = [e["job_id"] for e in process.events if e.get("event") == "generation_started"]
        ended = {e["job_id"] for e in process.events if e.get("event") in ("job_finished", "job_reconciled")}
        in_flight = invoked[-1] if invoked and invoked[-1] not in ended else None
        assert in_flight is None or id(process) in fleet.killed, f"{in_flight} abandoned by a living process"
        completed.update(job_id for job_id in invoked if job_id != in_flight)
        completed.update(e["job_id"] for e in process.events if e.get("event") == "job_reconciled")
        assert not [e for e in process.events if e.get("event") in ("job_lease_lost", "job_abandoned")]
    assert completed == Counter(list(by_id))


def sqlite_ledger(folders):
    from vidrop.daemon.ledger.sqlite import SqliteLedger

    return SqliteLedger(folders["state"] / "ledger.sqlite3")


def test_kill_9_at_random_moments_loses_nothing_and_repeats_nothing(folders, demo_models):
    names = fill_inbox(folders["inbox"], 100)
    env = vidrop_env(folders, demo_models["ltx"], VIDROP_RECOVERY__LEASE_SECONDS=LEASE_SECONDS)
    fleet, ledger = Fleet(env, size=1), sqlite_ledger(folders)
    try:
        schedule = run_with_kills(fleet, ledger, len(names), seed=20261122, kills=5)
        assert len(schedule) >= 5
        check_exactly_once(fleet, ledger, folders["outbox"], names)
    finally:
        fleet.stop_all()
        ledger.close()


def test_three_instances_on_one_host_share_a_sqlite_ledger(folders, demo_models):
    names = fill_inbox(folders["inbox"], 30)
    env = vidrop_env(folders, demo_models["ltx"], VIDROP_RECOVERY__LEASE_SECONDS=LEASE_SECONDS)
    fleet, ledger = Fleet(env, size=3), sqlite_ledger(folders)
    try:
        run_with_kills(fleet, ledger, len(names), seed=3, kills=2)
        check_exactly_once(fleet, ledger, folders["outbox"], names)
        assert len({p.process.pid for p in fleet.processes if p.events_named("generation_started")}) >= 3
    finally:
        fleet.stop_all()
        ledger.close()


def test_four_instances_share_a_postgresql_ledger(folders, demo_models, postgres_url):
    from vidrop.daemon.ledger.postgres import PostgresLedger

    names = fill_inbox(folders["inbox"], 40)
    env = vidrop_env(
        folders, demo_models["ltx"], VIDROP_RECOVERY__LEASE_SECONDS=LEASE_SECONDS, VIDROP_LEDGER_URL=postgres_url
    )
    fleet, ledger = Fleet(env, size=4), PostgresLedger(postgres_url)
    try:
        run_with_kills(fleet, ledger, len(names), seed=4, kills=3)
        check_exactly_once(fleet, ledger, folders["outbox"], names)
        assert not (folders["state"] / "ledger.sqlite3").exists()  # the share's ledger, not a local one
    finally:
        fleet.stop_all()
        ledger.close()
