import pytest

from pipeline.errors import InputError, ModelUnavailable
from pipeline.families import family_by_name, family_for_pipeline_class


def test_ltx_rounds_frames_up_to_8k_plus_1_and_sizes_to_32():
    fitted = family_by_name("ltx").fit(500, 500, 16)
    assert (fitted.width, fitted.height, fitted.num_frames) == (512, 512, 17)
    assert {a["field"] for a in fitted.adjustments} == {"width", "height", "num_frames"}
    assert "8k+1" in next(a["rule"] for a in fitted.adjustments if a["field"] == "num_frames")


def test_a_request_that_fits_is_not_adjusted():
    assert family_by_name("ltx").fit(64, 96, 25).adjustments == []
    assert family_by_name("i2vgen-xl").fit(72, 64, 16).adjustments == []


def test_i2vgen_xl_sizes_in_multiples_of_8():
    fitted = family_by_name("i2vgen-xl").fit(70, 61, 16)
    assert (fitted.width, fitted.height) == (72, 64)


def test_limits_name_the_field_and_value():
    family = family_by_name("ltx")
    with pytest.raises(InputError) as caught:
        family.check_limits(2048, 64, 9, 2, family.limits)
    assert "width" in caught.value.reason and "2048" in caught.value.reason


def test_family_detected_from_pipeline_class():
    assert family_for_pipeline_class("LTXPipeline").name == "ltx"
    assert family_for_pipeline_class("I2VGenXLPipeline").name == "i2vgen-xl"
    with pytest.raises(ModelUnavailable, match="StableDiffusionPipeline"):
        family_for_pipeline_class("StableDiffusionPipeline")
