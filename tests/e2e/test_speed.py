"""Speed levers at start: a lever that does not apply to the model or the device stops `vidrop once` (exit 78).

One real start here; the rest of the lever × family × device matrix is tests/unit/test_speed_plan.py."""

from tests.conftest import run_vidrop, vidrop_env


def test_a_lever_that_does_not_apply_stops_the_start_with_one_line_and_78(folders, demo_models):
    env = vidrop_env(folders, demo_models["ltx"], VIDROP_PIPELINE__SPEED__ATTENTION="flash")
    result = run_vidrop(env, "once")
    assert result.returncode == 78, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("vidrop:")]
    assert "attention=flash model=default: it needs a CUDA GPU" in line, line
    assert "Traceback" not in result.stderr and "model_loaded" not in result.stderr
    assert not list(folders["outbox"].glob("*.mp4"))
