"""Speed levers applied to the real tiny pipelines on the CPU: a cache skips work (counted) and says so; a cache
is off below its useful step count; compile steps aside under an offload mode; an OOM drops the cache.

Regional compile is tested on the tiny LTX (one step; under a minute with a cold compile cache); the compile of
every family and lever, with its warm-up, is measured by bench/speed.py (the tiny Wan's first compile takes about
two minutes on this CPU)."""

import numpy as np
import pytest
import torch._dynamo
import torch._inductor.config
from PIL import Image
from torch._dynamo.utils import counters

from tests.memory_fakes import GIB, FakeProbe, InjectedOOM
from vidrop.config.settings import LimitSettings, MemorySettings
from vidrop.pipeline.generate import VideoGenerator
from vidrop.pipeline.loader import load_model
from vidrop.pipeline.speed import CACHE_MIN_STEPS, SpeedLevers

IMAGE = Image.new("RGB", (40, 32), (200, 30, 30))
JOB = {"prompt": "red square", "width": 16, "height": 16, "num_frames": 1, "steps": CACHE_MIN_STEPS}


def make_generator(demo_models, mode="auto", **levers):
    loaded = load_model(str(demo_models["wan"]), family="auto", device="cpu", dtype="auto", offline=True)
    return VideoGenerator(
        loaded,
        fit="crop",
        limits=LimitSettings(),
        memory=MemorySettings(mode=mode),
        probe=FakeProbe([64 * GIB], device="cpu"),
        speed=SpeedLevers(**levers),
    )


@pytest.fixture(scope="module")
def cached(demo_models):
    return make_generator(demo_models, cache="pab")


def test_a_cache_skips_attention_work_counted_on_the_denoiser_and_the_facts_say_so(cached):
    generator = cached
    speed = generator.generate(IMAGE, generator.resolve(JOB), seed=4).facts["speed"]
    assert speed["levers"] == {"compile": "off", "attention": "native", "cache": "pab", "quantize": "off"}
    assert speed["dropped"] == [] and speed["denoiser_calls"] == 2 * CACHE_MIN_STEPS  # guidance: two calls a step
    # Wan's block has two attention modules: every call would compute both; the cache skipped some.
    assert (
        0 < speed["attention_skipped"] and speed["attention_calls"] + speed["attention_skipped"] == 4 * CACHE_MIN_STEPS
    )
    # The cache is off again after the job: the next one below the useful range runs without it, and says why.
    short = generator.generate(IMAGE, generator.resolve({**JOB, "steps": 2}), seed=4).facts["speed"]
    assert short["levers"]["cache"] == "off" and short["attention_skipped"] == 0
    assert short["dropped"] == [
        {
            "lever": "cache",
            "value": "pab",
            "why": f"2 steps is below the cache's useful range (at least {CACHE_MIN_STEPS})",
        }
    ]


def test_an_oom_under_a_cache_steps_down_and_drops_the_cache(cached):
    generator = cached
    oom = InjectedOOM(generator.loaded.pipe.transformer, lambda call: call == 3)
    try:
        result = generator.generate(IMAGE, generator.resolve(JOB), seed=4)
    finally:
        oom.remove()
    speed, memory = result.facts["speed"], result.facts["memory"]
    assert [(step["mode"], step["next_mode"]) for step in memory["recovery"]] == [("as_is", "tiled")]
    assert speed["levers"]["cache"] == "off" and speed["dropped"][0]["lever"] == "cache"
    assert speed["dropped"][0]["why"].startswith("out of memory under it (OutOfMemoryError")
    assert speed["attention_skipped"] == 0  # the retry ran every attention: no cache


def test_compile_is_not_combined_with_an_offload_mode_the_job_runs_uncompiled(demo_models):
    generator = make_generator(demo_models, mode="model_offload", compile="full")
    transformer = generator.loaded.pipe.transformer
    compiled = transformer.__dict__["forward"]
    assert hasattr(compiled, "_torchdynamo_orig_callable")  # compiled lazily: nothing is compiled until a call
    graphs = counters["stats"]["unique_graphs"]
    speed = generator.generate(IMAGE, generator.resolve({**JOB, "steps": 2}), seed=4).facts["speed"]
    assert speed["levers"]["compile"] == "off" and speed["compile_warmup_seconds"] is None
    assert speed["dropped"] == [
        {
            "lever": "compile",
            "value": "full",
            "why": "memory mode model_offload offloads weights; compiled code does not mix",
        }
    ]
    assert counters["stats"]["unique_graphs"] == graphs  # nothing was compiled
    assert transformer.__dict__["forward"] is compiled  # compiled again for the next job in a mode without offload


def test_compiled_code_that_fails_runs_the_job_again_uncompiled_and_later_jobs_say_why(demo_models):
    generator = make_generator(demo_models, compile="full")
    transformer = generator.loaded.pipe.transformer

    def broken(*args, **kwargs):  # what compiled code raises when it cannot run (here without compiling)
        raise torch._dynamo.exc.FailOnRecompileLimitHit("Hard failure due to fullgraph=True")

    broken._torchdynamo_orig_callable = transformer.__dict__["forward"]
    transformer.forward = broken
    first = generator.generate(IMAGE, generator.resolve({**JOB, "steps": 2}), seed=4)
    (dropped,) = first.facts["speed"]["dropped"]
    assert dropped["lever"] == "compile" and dropped["why"].startswith("compiled code failed (FailOnRecompileLimitHit")
    assert first.facts["speed"]["levers"]["compile"] == "off" and "forward" not in transformer.__dict__
    again = generator.generate(IMAGE, generator.resolve({**JOB, "steps": 2}), seed=4)
    assert again.facts["speed"]["dropped"] == [dropped] and np.array_equal(again.frames, first.frames)


@pytest.mark.slow
def test_regional_compile_warms_up_once_per_size_and_never_recompiles_a_size_it_has(demo_models):
    """The tiny LTX, regionally compiled on the CPU: the first job of a size compiles (its warm-up is recorded),
    the second of that size compiles nothing, and a new size compiles once more. One step, a few pixels: the
    compile itself is most of the time."""
    torch._dynamo.reset()
    loaded = load_model(str(demo_models["ltx"]), family="auto", device="cpu", dtype="auto", offline=True)
    generator = VideoGenerator(
        loaded,
        fit="crop",
        limits=LimitSettings(),
        probe=FakeProbe([64 * GIB], device="cpu"),
        speed=SpeedLevers(compile="regional"),
    )
    job = {"prompt": "red square", "width": 32, "height": 32, "num_frames": 9, "steps": 1}
    # Inductor compiles in this process: its pool of compile workers would outlive the test.
    with torch._inductor.config.patch(compile_threads=1):
        first, second, wider = [
            generator.generate(IMAGE, generator.resolve(request), seed=4).facts["speed"]
            for request in (job, job, {**job, "width": 64})
        ]
    assert first["levers"]["compile"] == "regional" and first["compiled_graphs"] > 0
    assert first["compile_warmup_seconds"] > 0
    assert second["compiled_graphs"] == 0 and not second["compile_warmup_seconds"]
    assert wider["compiled_graphs"] > 0  # a new size: compiled for it, once
    torch._dynamo.reset()
