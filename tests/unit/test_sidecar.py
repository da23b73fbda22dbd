import json

import pytest

from vidrop.config.errors import SidecarError
from vidrop.config.sidecar import parse_sidecar, sidecar_schema


def parse(data) -> object:
    return parse_sidecar(json.dumps(data).encode(), max_bytes=65536)


def test_common_web_api_names_are_accepted_as_aliases():
    sidecar = parse({"prompt": "waves", "num_inference_steps": 12, "frame_count": 25})
    assert (sidecar.steps, sidecar.num_frames) == (12, 25)


def test_unknown_key_is_refused_by_name():
    with pytest.raises(SidecarError) as caught:
        parse({"prompt": "waves", "colour": "red"})
    assert "'colour'" in caught.value.reason
    assert "prompt" in caught.value.fix  # the fix lists the known settings


def test_malformed_json_says_so_and_how_to_fix():
    with pytest.raises(SidecarError) as caught:
        parse_sidecar(b'{"prompt": "waves",', max_bytes=65536)
    assert "not valid JSON" in caught.value.reason
    assert '"prompt"' in caught.value.fix


@pytest.mark.parametrize(
    "field,value", [("fps", 2), ("fps", 31), ("guidance_scale", 25), ("seed", -1), ("format", "avi"), ("steps", 0)]
)
def test_out_of_range_values_name_the_field(field, value):
    with pytest.raises(SidecarError) as caught:
        parse({"prompt": "waves", field: value})
    assert f"'{field}'" in caught.value.reason
    assert repr(value) in caught.value.detail


def test_a_list_is_not_a_sidecar():
    with pytest.raises(SidecarError, match="JSON object"):
        parse_sidecar(b"[1, 2]", max_bytes=65536)


def test_oversized_sidecar_is_refused_before_parsing():
    with pytest.raises(SidecarError, match="too large"):
        parse_sidecar(b" " * 2048, max_bytes=1024)


def test_schema_lists_every_field_and_forbids_others():
    schema = sidecar_schema()
    assert schema["additionalProperties"] is False
    assert {
        "prompt",
        "negative_prompt",
        "num_frames",
        "fps",
        "steps",
        "guidance_scale",
        "width",
        "height",
        "seed",
        "format",
    } <= set(schema["properties"])
