"""The test harness's faults (tests/harness/vidrop_test_run.py): read from its own variables, applied around
the step callback of the generator it wraps."""

import pytest
import structlog

from tests.harness.vidrop_test_run import Faults, FaultsError, InjectedGenerator


class StepGenerator:
    """Calls on_step for each of its steps; has one attribute of its own besides."""

    family = "tiny"

    def generate(self, image, params, seed, on_step=None, admission=None):
        for step in (1, 2, 3):
            on_step(step, 3)
        return "frames"


def test_faults_go_through_the_environment_and_back(tmp_path):
    faults = Faults(
        slow_inputs=["slow-*", "*/slow-*"],
        slow_step_seconds=0.25,
        hang_inputs=["hang-*"],
        hang_marker=tmp_path / "marker",
    )
    assert Faults.from_environment(faults.environment()) == Faults(
        slow_inputs=("slow-*", "*/slow-*"),
        slow_step_seconds=0.25,
        hang_inputs=("hang-*",),
        hang_marker=tmp_path / "marker",
    )
    assert Faults.from_environment({}) == Faults()


@pytest.mark.parametrize(
    "environ,needle",
    [
        ({"VIDROP_TEST_SLOW_INPUTS": "slow-*"}, "JSON list"),
        ({"VIDROP_TEST_SLOW_INPUTS": '{"a": 1}'}, "JSON list"),
        ({"VIDROP_TEST_SLOW_STEP_SECONDS": "soon"}, "number of seconds"),
        ({"VIDROP_TEST_HANG_INPUTS": '["hang-*"]'}, "hang_marker"),
    ],
)
def test_unusable_variables_are_refused_by_name(environ, needle):
    with pytest.raises(FaultsError, match=needle):
        Faults.from_environment(environ)


def test_a_hang_input_hangs_once_of_all_attempts(tmp_path):
    faults = Faults(hang_inputs=["hang-*"], hang_marker=tmp_path / "marker")
    assert not faults.should_hang("other.png") and not (tmp_path / "marker").exists()
    assert faults.should_hang("hang-a.png") and (tmp_path / "marker").exists()
    assert not faults.should_hang("hang-a.png")  # the restarted process's second attempt runs


def test_the_wrapper_passes_every_step_on_and_delegates_the_rest():
    wrapped = InjectedGenerator(StepGenerator(), Faults(slow_inputs=["slow-*"], slow_step_seconds=0))
    steps = []
    with structlog.contextvars.bound_contextvars(input="slow-a.png"):
        assert wrapped.generate(None, None, 1, on_step=lambda step, total: steps.append((step, total))) == "frames"
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert wrapped.family == "tiny"
