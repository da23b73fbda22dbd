"""The daemon and memory: waiting for free memory, failing clearly past the limit, idle unload, drift restarts.

A real Daemon in this process, real files in a real inbox, the tiny real model; only the probe is fake.
"""

import json

import structlog
from structlog.testing import capture_logs

from tests.conftest import drop, make_image, sidecar, wait_for
from tests.fakes import RecordingNotifier
from tests.memory_fakes import GIB, FakeProbe
from vidrop.config.settings import LimitSettings, load_settings
from vidrop.daemon.app import Daemon
from vidrop.daemon.wiring import Wiring
from vidrop.pipeline.generate import VideoGenerator
from vidrop.pipeline.loader import load_model
from vidrop.pipeline.memory import ProcessUse, Usage

BLENDER = ProcessUse(pid=4121, name="blender", bytes=12 * GIB)
SMALL = {"width": 32, "height": 32, "num_frames": 9, "steps": 1}


class FakeClock:
    """Real wall time (file times), a monotonic time the test moves."""

    def __init__(self):
        self.now = 1000.0

    def time(self):
        import time

        return time.time()

    def monotonic(self):
        return self.now


def settings_for(folders, model, **memory):
    memory = {"wait_poll_seconds": 0.02, "wait_poll_max_seconds": 0.1, **memory}
    return load_settings(
        inbox=folders["inbox"],
        outbox=folders["outbox"],
        state_dir=folders["state"],
        pipeline={"model": str(model), "device": "cpu"},
        intake={"settle_seconds": 0, "pairing_seconds": 1, "tick_seconds": 0.05},
        memory=memory,
    ).settings


def generator_with(probe, settings):
    loaded = load_model(settings.pipeline.model, family="auto", device="cpu", dtype="auto", offline=True)
    return VideoGenerator(loaded, fit="crop", limits=LimitSettings(), memory=settings.memory, probe=probe)


def drop_job(inbox, name, **fields):
    """A distinct image per name (identical inputs would be recognised as duplicates, not run again)."""
    colour = tuple(sum(map(ord, name)) * factor % 256 for factor in (3, 5, 7))
    drop(inbox / f"{name}.json", sidecar(**{**SMALL, **fields}))
    drop(inbox / f"{name}.png", make_image(inbox.parent / f"{name}-src.png", color=colour).read_bytes())


def test_a_job_waits_for_memory_then_runs_when_it_frees(folders, demo_models):
    settings = settings_for(folders, demo_models["ltx"], max_wait_seconds=120)
    probe = FakeProbe([0, 0, 0, 64 * GIB], others=[BLENDER])  # blender holds the GPU for three checks
    notifier = RecordingNotifier()
    drop_job(folders["inbox"], "hero")
    daemon = Daemon(Wiring(settings, generator_factory=lambda s: generator_with(probe, s), notifier=notifier))
    with capture_logs() as logs:
        assert daemon.run(once=True) == 0
    waits = [event for event in logs if event["event"] == "memory_wait"]
    assert len(waits) == 3 and all(event["held_by"] == "blender (pid 4121)" for event in waits)
    assert waits[0]["waiting_for_bytes"] == waits[0]["need_bytes"] + int(1e9)  # the 1 GB reserve
    waiting = [text for text in notifier.statuses if "waiting for" in text]
    assert len(waiting) == 3
    assert waiting[0].endswith(
        f"waiting for {waits[0]['waiting_for_bytes'] / 1e9:.1f} GB free GPU memory, "
        "0.0 GB free, held by: blender (pid 4121)"
    )
    manifest = json.loads((folders["outbox"] / "hero.json").read_text())
    assert manifest["state"] == "done" and manifest["memory"]["mode"] == "as_is"
    assert manifest["memory"]["estimated_bytes"] > 0 and manifest["memory"]["measured_bytes"] >= 0
    assert set(manifest["memory"]["after_job"]) == {"allocated_bytes", "reserved_bytes", "rss_bytes"}
    speed = manifest["speed"]  # on the CPU, auto is plain: every lever off, and the calls counted
    assert speed["levers"] == {"compile": "off", "attention": "native", "cache": "off", "quantize": "off"}
    assert speed["dropped"] == [] and speed["denoiser_calls"] > 0 and speed["attention_skipped"] == 0


def test_waiting_past_the_limit_fails_with_what_it_needed_and_what_to_change(folders, demo_models):
    settings = settings_for(folders, demo_models["ltx"], max_wait_seconds=0.2)
    probe = FakeProbe([int(0.5 * GIB)], others=[BLENDER])
    drop_job(folders["inbox"], "big")
    drop_job(folders["inbox"], "small")
    daemon = Daemon(Wiring(settings, generator_factory=lambda s: generator_with(probe, s)))
    with capture_logs() as logs:
        assert daemon.run(once=True) == 1
    for name in ("big", "small"):  # each fails on its own; the daemon went on to the next
        error = json.loads((folders["outbox"] / f"{name}.error.json").read_text())
        assert error["state"] == "failed" and "not enough free GPU memory" in error["error"]
        assert "GB free GPU memory" in error["detail"] and "held by: blender (pid 4121)" in error["detail"]
        assert "32x32, 9 frames" in error["detail"]
        assert "memory.max_wait_seconds" in error["what_to_do"] and "num_frames" in error["what_to_do"]
        assert (folders["inbox"] / f"{name}.png").exists()  # inputs are never deleted
    assert any(event["event"] == "memory_wait" for event in logs)


def test_idle_unload_then_reload_on_the_next_job_with_its_time_recorded(folders, demo_models):
    settings = settings_for(folders, demo_models["ltx"], idle_unload_seconds=600)
    clock = FakeClock()
    notifier = RecordingNotifier()
    generators = []

    def factory(s):
        generators.append(generator_with(FakeProbe([64 * GIB]), s))
        return generators[-1]

    daemon = Daemon(Wiring(settings, generator_factory=factory, clock=clock, notifier=notifier))
    drop_job(folders["inbox"], "first")
    daemon.startup(watch=False)
    try:
        with capture_logs() as logs:
            wait_for(
                lambda: daemon.run_once(0.01) or (folders["outbox"] / "first.json").exists(),
                120,
                what="the first video",
            )
            daemon.run_once(0.01)
            assert generators[0].is_loaded  # not idle long enough yet
            clock.now += 601
            daemon.run_once(0.01)
            assert not generators[0].is_loaded and "model unloaded" in notifier.statuses[-1]
            drop_job(folders["inbox"], "second")
            clock.now += 40  # the next reconcile scan (every 30 s, jittered by up to 10%) finds it
            wait_for(
                lambda: daemon.run_once(0.01) or (folders["outbox"] / "second.json").exists(),
                120,
                what="the second video",
            )
    finally:
        daemon.shutdown()
    assert [event["event"] for event in logs if event["event"] in ("model_idle_unloaded", "model_reloaded")] == [
        "model_idle_unloaded",
        "model_reloaded",
    ]
    first = json.loads((folders["outbox"] / "first.json").read_text())
    second = json.loads((folders["outbox"] / "second.json").read_text())
    assert first["memory"]["reload_seconds"] is None and second["memory"]["reload_seconds"] > 0
    assert generators[0].is_loaded and len(generators) == 1


def test_usage_drifting_after_jobs_restarts_the_worker_after_the_job_is_safe(folders, demo_models):
    settings = settings_for(folders, demo_models["ltx"], drift_restart_gb=0.5, warmup_jobs=1)
    leaked = []

    def usage():  # every look finds a quarter GB more resident: a leak
        leaked.append(1)
        return Usage(allocated_bytes=0, reserved_bytes=0, rss_bytes=GIB + len(leaked) * GIB // 4)

    probe = FakeProbe([64 * GIB], usage_of=usage)
    generators = []
    daemon = Daemon(
        Wiring(settings, generator_factory=lambda s: generators.append(generator_with(probe, s)) or generators[-1])
    )
    for name in ("one", "two", "three"):
        drop_job(folders["inbox"], name, seed=len(name))
    with capture_logs() as logs:
        assert daemon.run(once=True) == 0
    events = [
        event["event"] for event in logs if event["event"] in ("job_finished", "worker_restarting", "model_reloaded")
    ]
    assert events.index("worker_restarting") > events.index("job_finished")
    assert "model_reloaded" in events and all(
        (folders["outbox"] / f"{n}.mp4").exists() for n in ("one", "two", "three")
    )
    restart = next(event for event in logs if event["event"] == "worker_restarting")
    assert restart["rss_bytes"] > restart["threshold_bytes"] == int(0.5e9)
    structlog.contextvars.clear_contextvars()
