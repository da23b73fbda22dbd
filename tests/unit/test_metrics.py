"""The metrics' settings: a port that cannot be used stops the start (ConfigError: exit 78); the textfile."""

import socket
from types import SimpleNamespace

import pytest

from tests.conftest import wait_for
from vidrop.config.errors import ConfigError
from vidrop.daemon.metrics import start_metrics


def settings(**fields):
    values = {"port": None, "port_offset": 0, "bind": "127.0.0.1", "textfile": None, **fields}
    return SimpleNamespace(**values, is_configured=values["port"] is not None or values["textfile"] is not None)


def test_off_unless_configured():
    assert start_metrics(settings(), SimpleNamespace(counts=dict), outbox_paused=lambda: False) is None


def test_a_port_in_use_stops_the_start():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="metrics.port"):
            start_metrics(settings(port=port - 2, port_offset=2), SimpleNamespace(counts=dict), lambda: False)


def test_the_textfile_has_every_series_from_the_start(tmp_path):
    metrics = start_metrics(settings(textfile=tmp_path / "v.prom"), SimpleNamespace(counts=dict), lambda: True)
    metrics.write_textfile(tmp_path / "v.prom")
    text = (tmp_path / "v.prom").read_text()
    assert 'vidrop_jobs{state="queued"} 0.0' in text and "vidrop_outbox_paused 1.0" in text
    wait_for(lambda: [p.name for p in tmp_path.iterdir()] == ["v.prom"], 10, what="temporaries renamed")


def job(key="k" * 16):
    from vidrop.daemon.ledger.base import Job

    fields = {"input": "a.png", "sidecar": None, "input_sha256": "a" * 64, "sidecar_sha256": None}
    return Job(id=key, key=key, **fields, params={}, seed=1, created_at=1.0, output="a")


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


def finished(metrics, family, model_switch):
    from vidrop.daemon.ledger.base import JobState

    manifest = {"family": family, "timings": {}, "memory": {"recovery": [{}]}, "model_switch": model_switch}
    metrics.job_changed(job(), JobState.DONE, {"manifest": manifest})


def test_model_loads_and_switches_are_counted_by_family():
    from vidrop.daemon.metrics import Metrics

    metrics = Metrics(families=("ltx", "wan"), counts=dict)
    assert sample(metrics, "vidrop_model_loads_total", family="wan") == 0  # there from the start
    assert sample(metrics, "vidrop_model_switches_total", family="wan") == 0
    at_start = {"a": {"family": "ltx", "resident": True}, "b": {"family": "wan", "resident": False}}
    metrics.models_loaded({"family": "ltx", "models": at_start})
    finished(metrics, "ltx", None)  # already resident: neither
    finished(metrics, "wan", {"from": "a", "evicted": ["a"], "load_seconds": 2.0})  # a switch with a load
    finished(metrics, "ltx", {"from": "b", "evicted": [], "load_seconds": None})  # a switch, still resident
    finished(metrics, "ltx", {"from": None, "evicted": [], "load_seconds": 1.5})  # loaded again after an unload
    assert sample(metrics, "vidrop_model_loads_total", family="ltx") == 2
    assert sample(metrics, "vidrop_model_loads_total", family="wan") == 1
    assert sample(metrics, "vidrop_model_switches_total", family="ltx") == 1
    assert sample(metrics, "vidrop_model_switches_total", family="wan") == 1
    assert sample(metrics, "vidrop_oom_recoveries_total") == 4
    assert sample(metrics, "vidrop_job_phase_seconds_count", family="ltx", phase="load") == 1


def test_hook_deliveries_are_counted_by_result(tmp_path):
    import sys

    from vidrop.config.settings import HookSettings
    from vidrop.daemon.hooks import HookDispatcher
    from vidrop.daemon.ledger.base import JobState
    from vidrop.daemon.metrics import Metrics

    metrics = Metrics(families=("ltx",), counts=dict)
    assert sample(metrics, "vidrop_hook_deliveries_total", hook="webhook", result="dead_lettered") == 0
    failing = "import sys; sys.exit(0 if sys.stdin.read().count('ok') else 3)"
    settings = HookSettings(command=[sys.executable, "-c", failing], retries=1, backoff_seconds=0)
    hooks = HookDispatcher(settings, dead_letter=tmp_path / "dead.jsonl")
    hooks.on_result = metrics.hook_attempt
    hooks.start()
    hooks.job_changed(job(), JobState.FAILED, {"error": {"error": "ok"}})
    hooks.job_changed(job(), JobState.FAILED, {"error": {"error": "no"}})
    hooks.close()
    assert sample(metrics, "vidrop_hook_deliveries_total", hook="command", result="delivered") == 1
    assert sample(metrics, "vidrop_hook_deliveries_total", hook="command", result="dead_lettered") == 1
    assert sample(metrics, "vidrop_hook_attempts_failed_total", hook="command") == 2
    assert len((tmp_path / "dead.jsonl").read_text().splitlines()) == 1
