"""The family table: which model types vidrop can run and how to recognise them."""

from __future__ import annotations

from vidrop.config.errors import ModelUnavailable
from vidrop.pipeline.families.animatediff import AnimateDiffFamily
from vidrop.pipeline.families.base import Family
from vidrop.pipeline.families.cogvideox import CogVideoXFamily
from vidrop.pipeline.families.hunyuan15 import HunyuanVideo15Family
from vidrop.pipeline.families.i2vgen_xl import I2VGenXLFamily
from vidrop.pipeline.families.ltx import LTXFamily
from vidrop.pipeline.families.ltx2 import LTX2Family
from vidrop.pipeline.families.svd import SVDFamily
from vidrop.pipeline.families.wan import WanFamily
from vidrop.pipeline.families.wan22 import Wan22Family, Wan22TI2VFamily

FAMILIES: dict[str, type[Family]] = {
    family.name: family
    for family in (
        LTXFamily,
        I2VGenXLFamily,
        SVDFamily,
        CogVideoXFamily,
        WanFamily,
        AnimateDiffFamily,
        Wan22Family,
        Wan22TI2VFamily,
        LTX2Family,
        HunyuanVideo15Family,
    )
}


def family_by_name(name: str) -> Family:
    """The family called `name` (as in settings and `vidrop demo-model --family`)."""
    return FAMILIES[name]()


def family_for_pipeline_class(class_name: str) -> Family:
    """The family whose pipelines include `class_name` (from a model's model_index.json)."""
    return family_for_model_index({"_class_name": class_name})


def family_for_model_index(index: dict) -> Family:
    """The family a model's model_index.json declares: its pipeline class and markers (Wan 2.2's experts)."""
    class_name = index.get("_class_name", "")
    for family in FAMILIES.values():
        if family.matches(index):
            return family()
    known = ", ".join(name for family in FAMILIES.values() for name in family.pipeline_class_names)
    raise ModelUnavailable(
        f"The model is a {class_name}, which vidrop cannot run.",
        detail=f"pipeline class {class_name} is not in the family table",
        fix=f"Use a model of one of these pipelines: {known}, or set pipeline.family explicitly.",
    )
