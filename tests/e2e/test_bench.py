"""The benchmarks run (at tiny sizes) and write their JSON; the GPU run-book refuses clearly without CUDA.

Benchmarks are not tests: nothing here asserts a timing.
"""

import json
import subprocess
import sys

import pytest
import torch

from bench.stats import percentile, summary
from tests.conftest import REPO

BENCHMARKS = {"overhead", "pickup", "scale", "encoding", "memory", "gpu"}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_every_benchmark_runs_at_a_tiny_size_and_writes_its_json(tmp_path):
    output = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output), "--workdir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1100,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    document = json.loads(output.read_text())
    assert document["quick"] is True
    assert set(document["benchmarks"]) == BENCHMARKS
    assert not [name for name, outcome in document["benchmarks"].items() if "error" in outcome]
    assert {figure["benchmark"] for figure in document["figures"]} == BENCHMARKS
    for figure in document["figures"]:
        assert figure["n"] >= 1 and figure["min"] <= figure["median"] <= figure["max"], figure
    # The run-book's CPU path with the tiny model: one configuration, float32, without torch.compile.
    gpu = document["benchmarks"]["gpu"]["details"]
    assert gpu["device"] == "cpu" and [(run["dtype"], run["compile"]) for run in gpu["runs"]] == [("float32", False)]
    assert gpu["runs"][0]["videos_per_hour"] > 0 and gpu["runs"][0]["peak_memory_bytes"] > 0
    assert "benchmark" in result.stdout and "figure" in result.stdout  # the table
    assert list(tmp_path.iterdir()) == [output]  # the work folder is cleaned up


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_gpu_runbook_refuses_clearly_without_cuda(tmp_path):
    output = tmp_path / "gpu.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 69
    assert "sees none" in result.stderr and "--device cpu" in result.stderr
    assert not output.exists()


def test_summary_is_median_min_max_of_the_runs():
    assert summary([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "p95": 8.95, "n": 4}
    assert percentile([1.0, 2.0, 3.0], 0.5) == 2.0
    assert summary([])["n"] == 0
