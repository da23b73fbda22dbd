"""Several models on one daemon: the queue avoids switching, and a tight device unloads the least recently used.

A real Daemon in this process, real files in a real inbox, two tiny real models (LTX-Video and I2VGen-XL)
loaded through the production path; only the memory probe is fake: it plays a GPU that holds one model.
"""

import json

from structlog.testing import capture_logs

from tests.conftest import drop, make_image, sidecar
from tests.integration.test_memory_daemon import SMALL
from tests.memory_fakes import GIB, FakeProbe
from vidrop.config.settings import load_settings
from vidrop.daemon.app import Daemon
from vidrop.daemon.wiring import Wiring
from vidrop.pipeline.generate import JobParams
from vidrop.pipeline.memory import MemorySnapshot
from vidrop.pipeline.model_set import open_models

MODEL_GIB = 3  # what each loaded model takes on the pretend GPU


class OneModelGpu(FakeProbe):
    """A 4 GiB GPU where each loaded model takes 3 GiB: one model and a job fit, two models do not."""

    def __init__(self):
        super().__init__([0], total=4 * GIB)
        self.models = None

    def snapshot(self):
        loaded = sum(generator.is_loaded for generator in self.models.generators.values())
        return MemorySnapshot(device=self.device, free_bytes=(4 - MODEL_GIB * loaded) * GIB, total_bytes=self.total)


def settings_for(folders, demo_models, **pipeline):
    return load_settings(
        inbox=folders["inbox"],
        outbox=folders["outbox"],
        state_dir=folders["state"],
        pipeline={
            "model": "ltx",
            "models": {"ltx": str(demo_models["ltx"]), "i2v": str(demo_models["i2vgen-xl"])},
            "device": "cpu",
            **pipeline,
        },
        intake={"settle_seconds": 0, "pairing_seconds": 1, "tick_seconds": 0.05},
        memory={"reserve_gb": 0.5, "wait_poll_seconds": 0.02, "max_wait_seconds": 5},
        gallery={"enabled": False},
    ).settings


def models_on(probe, settings):
    models = open_models(settings.pipeline, limits=settings.limits, memory=settings.memory, probe=probe)
    probe.models = models
    return models


def drop_job(inbox, name, **fields):
    colour = tuple(sum(map(ord, name)) * factor % 256 for factor in (3, 5, 7))
    drop(inbox / f"{name}.json", sidecar(**{**SMALL, **fields}))
    drop(inbox / f"{name}.png", make_image(inbox.parent / f"{name}-src.png", color=colour).read_bytes())


def test_jobs_for_the_loaded_model_run_first_and_a_switch_unloads_the_other(folders, demo_models):
    settings = settings_for(folders, demo_models)
    probe = OneModelGpu()
    inbox = folders["inbox"]
    # Arrival order alternates; ltx (the default) is loaded at start.
    drop_job(inbox, "b1", model="i2v")
    drop_job(inbox, "a1", model="ltx")
    drop_job(inbox, "b2", model="i2v")
    drop_job(inbox, "a2")  # no model: the default
    daemon = Daemon(Wiring(settings, generator_factory=lambda s: models_on(probe, s)))
    with capture_logs() as logs:
        assert daemon.run(once=True) == 0

    started = [event["model"] for event in logs if event["event"] == "job_started"]
    assert started == ["ltx", "ltx", "i2v", "i2v"]  # one switch, not three
    switched = [event for event in logs if event["event"] == "model_switched"]
    assert [(event["previous"], event["model"]) for event in switched] == [("ltx", "i2v")]
    evicted = [event for event in logs if event["event"] == "model_evicted"]
    assert [(event["model"], event["reason"], event["for_model"]) for event in evicted] == [
        ("ltx", "job_needs_memory", "i2v")
    ]

    manifests = {
        name: json.loads((folders["outbox"] / f"{name}.json").read_text()) for name in ("a1", "a2", "b1", "b2")
    }
    assert {name: manifest["model_name"] for name, manifest in manifests.items()} == {
        "a1": "ltx",
        "a2": "ltx",
        "b1": "i2v",
        "b2": "i2v",
    }
    assert {manifest["family"] for name, manifest in manifests.items() if name[0] == "b"} == {"i2vgen-xl"}
    first_i2v, second_i2v = sorted((manifests["b1"], manifests["b2"]), key=lambda m: m["timings"]["started_at"])
    assert first_i2v["model_switch"]["from"] == "ltx" and first_i2v["model_switch"]["load_seconds"] > 0
    assert first_i2v["model_switch"]["evicted"] == ["ltx"]
    assert second_i2v["model_switch"] is None
    assert manifests["a1"]["model_switch"] is None and manifests["a2"]["model_switch"] is None
    assert first_i2v["memory"]["mode"] == "as_is"  # the job got the room it needed by the unload
    assert daemon.services.generator.resident_models() == ["i2v"]


def test_a_model_whose_weights_do_not_fit_unloads_the_least_recently_used(folders, demo_models):
    settings = settings_for(
        folders,
        demo_models,
        models={"ltx": str(demo_models["ltx"]), "i2v": str(demo_models["i2vgen-xl"]), "svd": str(demo_models["svd"])},
    )
    probe = OneModelGpu()
    # With one model loaded, 100 kB are left beside the reserve: not enough for another model's weights.
    reserve_gb = (GIB - 100_000) / 1e9
    models = models_on(
        probe, settings.model_copy(update={"memory": settings.memory.model_copy(update={"reserve_gb": reserve_gb})})
    )
    assert models.resident_models() == ["ltx"]
    with capture_logs() as logs:
        admission = models.admit(models.resolve({**SMALL, "model": "i2v", "prompt": "x"}))
    assert models.resident_models() == ["i2v"]
    assert [(event["model"], event["reason"]) for event in logs if event["event"] == "model_evicted"] == [
        ("ltx", "weights_do_not_fit")
    ]
    assert admission.mode is None  # the pretend GPU has no room for the job itself either: it would wait
    assert isinstance(models.resolve({**SMALL, "model": "svd"}), JobParams)  # resolved without loading svd
    assert not models.generators["svd"].is_loaded


def test_max_resident_models_unloads_the_least_recently_used(folders, demo_models):
    settings = settings_for(
        folders,
        demo_models,
        models={"ltx": str(demo_models["ltx"]), "i2v": str(demo_models["i2vgen-xl"]), "svd": str(demo_models["svd"])},
    )
    settings = settings.model_copy(update={"memory": settings.memory.model_copy(update={"max_resident_models": 2})})
    models = models_on(FakeProbe([64 * GIB]), settings)
    with capture_logs() as logs:
        models.admit(models.resolve({**SMALL, "model": "i2v", "prompt": "x"}))  # ltx, i2v
        models.admit(models.resolve({**SMALL, "model": "ltx", "prompt": "x"}))  # ltx is the most recent now
        models.admit(models.resolve({**SMALL, "model": "svd"}))  # unloads i2v, the least recently used
    assert models.resident_models() == ["svd", "ltx"]
    assert [(event["model"], event["reason"]) for event in logs if event["event"] == "model_evicted"] == [
        ("i2v", "too_many_models")
    ]
