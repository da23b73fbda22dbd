"""A burst of 500 images by `cp -r` and another by rsync: each processed exactly once."""

import json
import subprocess
from collections import Counter

import pytest
from PIL import Image

from tests.conftest import job_lines, ledger_jobs, vidrop_env, wait_for

BURST = 500


def burst_folder(root, name, blue):
    folder = root / name
    folder.mkdir(parents=True)
    for index in range(BURST):  # every image different: identical ones would be (rightly) reused, not run
        Image.new("RGB", (32, 32), (index % 256, index // 256, blue)).save(folder / f"img{index:03}.png")
    # One prompt for the whole folder; the tiniest job the model accepts.
    (folder / "_defaults.json").write_text(
        json.dumps({"prompt": "{stem}", "width": 32, "height": 32, "num_frames": 1, "steps": 1, "fps": 8})
    )
    return folder


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_500_by_cp_and_500_by_rsync_each_exactly_once(folders, demo_models, start_vidrop, tmp_path):
    source = tmp_path / "src"
    copied, synced = burst_folder(source, "copied", 99), burst_folder(source, "synced", 199)
    vidrop = start_vidrop(vidrop_env(folders, demo_models["ltx"], VIDROP_INTAKE__PAIRING_SECONDS="1"))
    vidrop.wait_event("daemon_ready")
    subprocess.run(["cp", "-r", str(copied), str(folders["inbox"])], check=True)
    subprocess.run(["rsync", "-a", f"{synced}/", str(folders["inbox"] / "synced")], check=True)

    for name in ("copied", "synced"):
        wait_for(
            lambda: len(job_lines(folders["outbox"] / name)) >= BURST,
            1200,
            interval=1,
            what=f"{BURST} jobs from {name}",
        )
    jobs = ledger_jobs(folders["state"])
    per_input = Counter(job.input for job in jobs)
    assert len(per_input) == 2 * BURST and set(per_input.values()) == {1}
    assert Counter(job.state.value for job in jobs) == {"done": 2 * BURST}
    for name in ("copied", "synced"):
        lines = job_lines(folders["outbox"] / name)
        assert len(lines) == BURST and len({line["input"] for line in lines}) == BURST
        videos = sorted(p.name for p in (folders["outbox"] / name).glob("*.mp4"))
        assert videos == [f"img{index:03}.mp4" for index in range(BURST)]
    started = Counter(event["job_id"] for event in vidrop.events_named("job_started"))
    assert len(started) == 2 * BURST and set(started.values()) == {1}
