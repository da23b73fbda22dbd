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
