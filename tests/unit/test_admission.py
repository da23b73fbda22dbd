"""Admission, estimate and calibration with a fake probe: which mode for which free memory."""

import numpy as np
import pytest

from tests.memory_fakes import GIB, FakeProbe
from vidrop.config.errors import GenerationError, InputError
from vidrop.pipeline.admission import MemoryEstimator, ModelFootprint, choose_mode
from vidrop.pipeline.families.i2vgen_xl import I2VGenXLFamily
from vidrop.pipeline.families.ltx import LTXFamily
from vidrop.pipeline.generate import check_frames
from vidrop.pipeline.memory import GB, CpuProbe, DriftWatch, MemorySnapshot, ProcessUse, Usage
from vidrop.pipeline.modes import LADDER, MemoryMode

BLENDER = ProcessUse(pid=4121, name="blender", bytes=12 * GIB)
FOOTPRINT = ModelFootprint(total_bytes=14 * GIB, largest_component_bytes=9 * GIB, largest_leaf_bytes=200 * 2**20)
JOB = {"width": 704, "height": 480, "frames": 121}


def estimator(family=LTXFamily(), offloads=True):
    return MemoryEstimator(family, FOOTPRINT, offloads_weights=offloads, dtype_bytes=2)


def admit(free, *, forced=None, est=None, resident=0):
    snapshot = FakeProbe([free], others=[BLENDER]).snapshot()
    return choose_mode(est or estimator(), snapshot, **JOB, resident_now=resident, reserve_bytes=GIB, forced=forced)


@pytest.mark.parametrize("family", [LTXFamily(), I2VGenXLFamily()], ids=lambda f: f.name)
def test_each_rung_needs_less_than_the_one_above(family):
    needs = [estimator(family).need(mode, **JOB, resident_now=0) for mode in LADDER]
    assert needs == sorted(needs, reverse=True) and len(set(needs)) == len(needs), needs


def test_admission_picks_the_fastest_mode_that_fits_for_each_free_value():
    needs = {mode: estimator().need(mode, **JOB, resident_now=0) for mode in LADDER}
    for mode in LADDER:
        # Exactly enough for this rung (plus the 1 GB reserve) but not for the one above it.
        assert admit(needs[mode] + GIB).mode is mode
    assert admit(needs[MemoryMode.AS_IS] + 10 * GIB).mode is MemoryMode.AS_IS
    assert admit(needs[MemoryMode.TILED] + GIB - 1).mode is MemoryMode.MODEL_OFFLOAD
    # The reserve is left for others: need + reserve − 1 byte free is not enough.
    assert admit(needs[MemoryMode.GROUP_OFFLOAD] + GIB - 1).mode is None


def test_when_nothing_fits_the_job_waits_and_says_for_what_and_who_holds_the_gpu():
    lean = estimator().need(MemoryMode.GROUP_OFFLOAD, **JOB, resident_now=0)
    admission = admit(int(0.3 * GB))
    assert not admission.fits and admission.need_bytes == lean
    expected = f"waiting for {(lean + GIB) / GB:.1f} GB free GPU memory, 0.3 GB free, held by: blender (pid 4121)"
    assert admission.waiting_text() == expected


def test_weights_already_on_the_device_are_not_counted_again():
    loaded = admit(10 * GIB, resident=FOOTPRINT.total_bytes)
    assert loaded.mode is MemoryMode.AS_IS and loaded.need_bytes < 9 * GIB
    assert admit(10 * GIB).mode is not MemoryMode.AS_IS  # unloaded: the weights must come back first


def test_on_the_cpu_offloading_saves_nothing_so_only_tiling_lowers_the_need():
    cpu = estimator(offloads=False)
    needs = [cpu.need(mode, **JOB, resident_now=0) for mode in LADDER]
    assert needs[0] > needs[1] == needs[2] == needs[3]


def test_a_forced_mode_is_the_only_one_considered():
    assert admit(100 * GIB, forced=MemoryMode.MODEL_OFFLOAD).mode is MemoryMode.MODEL_OFFLOAD
    assert admit(GIB, forced=MemoryMode.AS_IS).mode is None


def test_measured_peaks_calibrate_the_estimate_within_bounds():
    est = estimator()
    before = est.need(MemoryMode.TILED, **JOB, resident_now=0)
    est.record(estimated_bytes=1000, measured_bytes=2000)
    assert est.need(MemoryMode.TILED, **JOB, resident_now=0) == int(before * 2.0)
    est.record(estimated_bytes=1000, measured_bytes=10**9)
    assert est.calibration == 4.0  # one odd job cannot run away with it
    for _ in range(est.history):
        est.record(estimated_bytes=1000, measured_bytes=900)
    assert est.calibration == 0.9  # old ratios age out


def test_drift_after_warm_up_past_the_threshold_asks_for_a_restart():
    watch = DriftWatch(threshold_bytes=GIB, warmup_jobs=2)
    usage = Usage(allocated_bytes=GIB, reserved_bytes=2 * GIB, rss_bytes=3 * GIB)
    assert watch.observe(Usage(0, 0, 10 * GIB)) is None  # warm-up: anything goes
    assert watch.observe(usage) is None  # the baseline
    assert watch.observe(Usage(GIB, 2 * GIB + GIB // 2, 3 * GIB)) is None
    drift = watch.observe(Usage(GIB, 2 * GIB, 4 * GIB + 1))
    assert drift == {"allocated_bytes": 0, "reserved_bytes": 0, "rss_bytes": GIB + 1}
    watch.restart()
    assert watch.baseline is None and watch.jobs_seen == 0


def test_the_cpu_probe_reports_ram_and_a_per_job_peak():
    probe = CpuProbe()
    snapshot = probe.snapshot()
    assert 0 < snapshot.free_bytes <= snapshot.total_bytes and snapshot.kind == "memory"
    probe.reset_peak()
    block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB touched
    rss = probe.usage().rss_bytes  # read before the peak: the high-water mark only grows meanwhile
    assert probe.peak_bytes() >= rss >= block.nbytes


def test_snapshot_without_per_process_data_says_so():
    assert MemorySnapshot("cuda:0", 1, 2).held_by() == "unknown programs"
    many = MemorySnapshot("cuda:0", 1, 2, others=(ProcessUse(1, "a", 5), ProcessUse(2, "b", 9)))
    assert many.held_by() == "b (pid 2), a (pid 1)"


def test_recovered_frames_must_be_real():
    moving = np.random.default_rng(0).random((3, 4, 4, 3), dtype=np.float32)
    check_frames(moving)
    with pytest.raises(GenerationError, match="all the same"):
        check_frames(np.repeat(moving[:1], 3, axis=0))
    broken = moving.copy()
    broken[1, 2, 2, 0] = np.nan
    with pytest.raises(GenerationError, match="not-a-number"):
        check_frames(broken)


def test_a_request_far_beyond_the_limits_is_refused_up_front_naming_the_field():
    family = LTXFamily()
    fitted = family.fit(4096, 4096, 1024)
    with pytest.raises(InputError, match=r"width \(4096\).*\(1280\)") as caught:
        family.check_limits(fitted.width, fitted.height, fitted.num_frames, 50, family.limits)
    assert "'width' to 1280 or less" in caught.value.fix


def test_lora_adapters_add_their_weights_to_the_estimate(tmp_path):
    import torch
    from safetensors.torch import save_file

    from vidrop.config.settings import LoraSettings
    from vidrop.pipeline.loras import LoraAdapters

    path = tmp_path / "style.safetensors"
    save_file({"a.lora_A.weight": torch.zeros(4, 64, dtype=torch.float16), "a.lora_B.weight": torch.zeros(64, 4)}, path)
    adapters = LoraAdapters({"style": LoraSettings(path=path), "other": LoraSettings(path=path)})
    asked = ({"name": "style", "weight": 1.0},)
    # Not loaded yet: from the file's tensor shapes, at float32 (peft may keep adapters in float32).
    assert adapters.resident_bytes(asked, 2) == 2 * 4 * 64 * 4 and adapters.resident_bytes((), 2) == 0
    adapters.loaded["other"] = None  # kept from an earlier job, measured when it loaded
    adapters.sizes["other"] = 1000
    assert adapters.resident_bytes(asked, 2) == 2048 + 1000
    est = estimator()
    for mode in (MemoryMode.AS_IS, MemoryMode.TILED, MemoryMode.MODEL_OFFLOAD):
        assert est.need(mode, **JOB, resident_now=0, adapter_bytes=GIB) == est.need(mode, **JOB, resident_now=0) + GIB
    with_adapters = choose_mode(
        est, FakeProbe([100 * GIB]).snapshot(), **JOB, resident_now=0, reserve_bytes=GIB, adapter_bytes=GIB
    )
    assert with_adapters.need_bytes == admit(100 * GIB).need_bytes + GIB


def test_a_cache_that_holds_memory_is_in_the_estimate_and_can_step_admission_down():
    from vidrop.pipeline.speed import SpeedLevers, SpeedPlan

    faster = SpeedPlan("cogvideox", SpeedLevers(compile="off", attention="native", cache="faster"), "cpu")
    # The published figure it is costed from: about 16 GB more on CogVideoX-5B at 720×480×49.
    published = faster.extra_bytes(steps=50, shape=(720, 480, 49), preset=None, dtype_bytes=2)
    assert 15 * GB < published < 18 * GB
    assert faster.extra_bytes(steps=4, shape=(720, 480, 49), preset=None, dtype_bytes=2) == 0  # too few steps: off
    plain = SpeedPlan("cogvideox", SpeedLevers(compile="off", attention="native", preset_cache={}), "cpu")
    assert plain.extra_bytes(steps=50, shape=(720, 480, 49), preset="fast", dtype_bytes=2) == 0
    by_preset = SpeedPlan(
        "cogvideox", SpeedLevers(compile="off", attention="native", preset_cache={"fast": "faster"}), "cpu"
    )
    assert by_preset.extra_bytes(steps=50, shape=(720, 480, 49), preset="fast", dtype_bytes=2) == published
    wan = SpeedPlan("wan", SpeedLevers(compile="off", attention="native", preset_cache={"fast": "faster"}), "cpu")
    assert wan.extra_bytes(steps=50, shape=(720, 480, 49), preset="fast", dtype_bytes=2) == 0  # Wan cannot take it

    job = {"width": 480, "height": 320, "frames": 49}
    extra = faster.extra_bytes(steps=50, shape=(480, 320, 49), preset=None, dtype_bytes=2)
    as_is = estimator().need(MemoryMode.AS_IS, **job, resident_now=0)
    room = FakeProbe([as_is + GIB + extra // 2]).snapshot()  # as_is fits, as_is with the cache does not
    plain_admission = choose_mode(estimator(), room, **job, resident_now=0, reserve_bytes=GIB)
    cached = choose_mode(estimator(), room, **job, resident_now=0, reserve_bytes=GIB, lever_bytes=extra)
    assert all(cached.needs[mode] == plain_admission.needs[mode] + extra for mode in cached.needs)
    assert plain_admission.mode is MemoryMode.AS_IS and LADDER.index(cached.mode) > 0  # pushed down the ladder
