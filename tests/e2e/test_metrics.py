"""Prometheus metrics of a real `vidrop run`: every series there from the start, values that follow the jobs,
a textfile replaced atomically."""

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import drop_job, free_port, vidrop_env, wait_for

pytestmark = pytest.mark.e2e


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse(response.read().decode())


def parse(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def test_a_running_instance_serves_metrics_and_writes_the_textfile(folders, demo_models, start_vidrop, tmp_path):
    port, textfile = free_port(), tmp_path / "prom" / "vidrop.prom"
    textfile.parent.mkdir()
    env = vidrop_env(
        folders,
        demo_models["ltx"],
        VIDROP_METRICS__PORT=str(port - 1),
        VIDROP_METRICS__PORT_OFFSET="1",
        VIDROP_METRICS__TEXTFILE=str(textfile),
    )
    vidrop = start_vidrop(env)
    vidrop.wait_event("daemon_ready")

    # From the start: every known series, as 0.
    before = scrape(port)
    assert value(before, "vidrop_jobs", state="queued") == 0
    assert value(before, "vidrop_jobs_finished_total", state="done") == 0
    assert value(before, "vidrop_jobs_finished_total", state="failed") == 0
    for phase in ("wait", "load", "prepare", "denoise", "decode", "encode", "write"):
        assert value(before, "vidrop_job_phase_seconds_count", family="ltx", phase=phase) == 0
    assert value(before, "vidrop_memory_mode_jobs_total", mode="as_is") == 0
    assert value(before, "vidrop_last_finished_timestamp_seconds") == 0
    assert value(before, "vidrop_model_loads_total", family="ltx") == 1  # the start's
    assert value(before, "vidrop_model_switches_total", family="ltx") == 0
    assert value(before, "vidrop_hook_deliveries_total", hook="webhook", result="delivered") == 0
    build = [labels for (name, labels) in before if name == "vidrop_build_info"][0]
    assert {key for key, _ in build} == {"vidrop", "diffusers", "torch"}
    wait_for(textfile.exists, 30, what="the textfile")

    drop_job(folders["inbox"], "one")
    drop_job(folders["inbox"], "bad", num_frames="many")
    wait_for(lambda: value(scrape(port), "vidrop_jobs_finished_total", state="done") == 1, 120, what="done")
    after = scrape(port)
    assert value(after, "vidrop_jobs_finished_total", state="done") == 1
    assert value(after, "vidrop_jobs", state="done") == 1 and value(after, "vidrop_jobs", state="queued") == 0
    for phase in ("wait", "prepare", "denoise", "decode", "encode", "write"):
        assert value(after, "vidrop_job_phase_seconds_count", family="ltx", phase=phase) == 1, phase
    assert value(after, "vidrop_memory_mode_jobs_total", mode="as_is") == 1
    assert value(after, "vidrop_model_loads_total", family="ltx") == 1  # still resident: no second load
    assert value(after, "vidrop_last_finished_timestamp_seconds") > 0
    assert value(after, "vidrop_jobs_running") == 0 and value(after, "vidrop_outbox_paused") == 0

    # The textfile follows, and is never seen half-written: no temporary left next to it.
    wait_for(
        lambda: value(parse(textfile.read_text()), "vidrop_jobs_finished_total", state="done") == 1, 30, what="file"
    )
    wait_for(lambda: [p.name for p in textfile.parent.iterdir()] == ["vidrop.prom"], 30, what="temporaries renamed")
    assert vidrop.stop() == 0
