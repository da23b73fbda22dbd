"""Many jobs in one process on the CPU: the resident set stays flat after warm-up.

The default run does 12 tiny jobs; `pytest -m long` runs the 200-job soak. The numbers are printed.
"""

import time

import numpy as np
import pytest
from PIL import Image

from vidrop.config.settings import LimitSettings, MemorySettings
from vidrop.pipeline.generate import VideoGenerator
from vidrop.pipeline.loader import load_model
from vidrop.pipeline.memory import rss_bytes

WARMUP = 3
MIB = 2**20


def soak(demo_models, jobs, capsys):
    loaded = load_model(str(demo_models["ltx"]), family="auto", device="cpu", dtype="auto", offline=True)
    generator = VideoGenerator(loaded, fit="crop", limits=LimitSettings(), memory=MemorySettings())
    params = generator.resolve({"prompt": "red square", "width": 32, "height": 32, "num_frames": 9, "steps": 1})
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    samples = []
    started = time.monotonic()
    for number in range(jobs):
        result = generator.generate(image, params, seed=number)
        generator.after_job()
        assert result.frames.shape == (9, 32, 32, 3)
        samples.append(rss_bytes())
    seconds = time.monotonic() - started
    settled = np.array(samples[WARMUP:]) / MIB
    growth = settled.max() - settled[0]
    tail_growth = settled[-3:].mean() - settled[:3].mean()
    with capsys.disabled():
        print(
            f"\nRSS over {jobs} jobs ({seconds:.0f} s, {seconds / jobs:.2f} s/job): after warm-up "
            f"{settled[0]:.0f} MiB, max {settled.max():.0f} MiB, last {settled[-1]:.0f} MiB, "
            f"max growth {growth:.1f} MiB, last-3 minus first-3 {tail_growth:.1f} MiB"
        )
    return growth, tail_growth


def test_rss_is_flat_over_many_jobs(demo_models, capsys):
    growth, tail_growth = soak(demo_models, 12, capsys)
    assert tail_growth < 16 and growth < 48, (growth, tail_growth)


@pytest.mark.long
@pytest.mark.timeout(3600)
def test_rss_is_flat_over_200_jobs(demo_models, capsys):
    growth, tail_growth = soak(demo_models, 200, capsys)
    assert tail_growth < 16 and growth < 48, (growth, tail_growth)
