"""Expanding seeds and variants into requests; presets under explicit fields."""

from vidrop.config.sidecar import Sidecar
from vidrop.daemon.intake.variants import expand, layered
from vidrop.pipeline.families import FAMILIES, family_by_name

FAST = {"steps": 10, "num_frames": 17, "guidance_scale": 2.0}


def preset(name, model=None):
    return {"fast": FAST}[name]


def test_a_plain_sidecar_is_one_request():
    requests = expand({"format": "mp4"}, Sidecar(prompt="waves"), preset)
    assert [(r.suffix, r.fields) for r in requests] == [("", {"format": "mp4", "prompt": "waves"})]


def test_seeds_times_variants_each_with_its_suffix():
    sidecar = Sidecar(
        prompt="waves",
        seeds=[3, 4],
        variants=[{"suffix": "_a", "prompt_add": "at dawn"}, {"suffix": "_b", "prompt": "rain", "steps": 7}],
    )
    requests = {r.suffix: r.fields for r in expand({}, sidecar, preset)}
    assert set(requests) == {"_a_seed3", "_a_seed4", "_b_seed3", "_b_seed4"}
    assert requests["_a_seed4"] == {"prompt": "waves, at dawn", "seed": 4}
    assert requests["_b_seed3"] == {"prompt": "rain", "steps": 7, "seed": 3}


def test_explicit_fields_win_over_the_preset_which_wins_over_settings():
    fields = layered({"steps": 30, "fps": 12, "preset": "fast"}, {"num_frames": 9}, preset)
    assert fields == {"steps": 10, "fps": 12, "preset": "fast", "num_frames": 9, "guidance_scale": 2.0}


def test_every_family_has_the_three_presets_within_its_limits():
    for name in FAMILIES:
        family = family_by_name(name)
        assert set(family.presets) == {"fast", "standard", "high"}, name
        for values in family.presets.values():
            # A preset without a size keeps the family's default one (HunyuanVideo 1.5 has no free sizes).
            width, height = values.get("width", family.defaults.width), values.get("height", family.defaults.height)
            fitted = family.fit(width, height, values.get("num_frames", 9))
            assert not fitted.adjustments, (name, values)
            family.check_limits(fitted.width, fitted.height, fitted.num_frames, values["steps"], family.limits)
