"""The README's service section, run as written, from the wheel, in a real systemd (sdbox).

The lines come out of the README's `service-install` block. Inside the box (its own mount namespace; the host's
files stay read-only) /etc is a writable copy, so that useradd, /etc/vidrop and /etc/systemd/system are the
box's own; /opt and /srv are tmpfs. What the test adds, and nothing else: the interpreter of this suite for
`python3`, the project venv's packages borrowed through a .pth file (no network: pip finds only the wheel), the
settings file an operator would have edited (the tiny demo model, on the CPU), and a dropped image.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, wait_for
from tests.e2e.test_install import NOT_BORROWED, _package_folders, wheel  # noqa: F401 (the wheel fixture)
from tests.sdbox import Box, make_work_dir, require_sdbox

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MARKER = "<!-- service-install:"
PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"


def readme_lines() -> list[str]:
    """The commands of the README's service-install block, comments removed."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(MARKER) :].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_service_section_installs_and_runs_vidrop_from_the_wheel(wheel):  # noqa: F811
    require_sdbox()
    lines = readme_lines()
    assert lines[:2] == ["python3 -m venv /opt/vidrop", '/opt/vidrop/bin/pip install "vidrop[systemd]"']
    work = make_work_dir("readme")
    work.chmod(0o755)  # mkdtemp's 0700 would hide the borrowed packages and the model from the service user
    box = None
    try:
        box = _boot(work, wheel)
        _sh(box, f"{PYTHON} -m venv /opt/vidrop")  # lines[0], with this suite's python3
        _sh(box, "/opt/vidrop/bin/pip uninstall -q -y setuptools")  # the venv's own, older than torch asks
        _sh(box, f"echo {work / 'borrowed'} > /opt/vidrop/lib/{PYTHON.name}/site-packages/borrowed.pth")
        _sh(box, f"PIP_NO_INDEX=1 PIP_FIND_LINKS={work / 'dist'} {lines[1]}")
        _sh(box, f"/opt/vidrop/bin/vidrop demo-model {work / 'model'} && chmod -R a+rX {work / 'model'}")
        _sh(box, f"mkdir -p /etc/vidrop && cp {work / 'vidrop.toml'} /etc/vidrop/vidrop.toml")
        assert _sh(box, "id vidrop", check=False).returncode != 0  # the user does not exist yet
        printed = "".join(_sh(box, line).stdout for line in lines[2:])
        assert "created the system user and group vidrop" in printed
        assert "created /srv/vidrop/inbox" in printed and "wrote /etc/systemd/system/vidrop.service" in printed
        assert box.show("vidrop.service", "ActiveState")["ActiveState"] == "active"
        _sh(box, "/opt/vidrop/bin/python -c \"from PIL import Image; Image.new('RGB', (64, 64)).save('/tmp/s.png')\"")
        job = '{"prompt": "sun", "width": 64, "height": 64, "num_frames": 9, "steps": 2}'
        _sh(box, f"cp /tmp/s.png /srv/vidrop/inbox/sun.png && echo '{job}' > /srv/vidrop/inbox/sun.json")
        wait_for(lambda: _sh(box, "test -s /srv/vidrop/outbox/sun.mp4", check=False).returncode == 0, 240, 1)
        owner = _sh(box, "stat -c '%U:%G %a' /srv/vidrop/outbox/sun.mp4 /srv/vidrop/inbox").stdout.split("\n")
        assert owner[:2] == ["vidrop:designers 664", "vidrop:designers 2775"]
        assert _sh(box, "test -f /var/lib/vidrop/ledger.sqlite3", check=False).returncode == 0
        story = box.journal_text("-u", "vidrop")
        for event in ("daemon_ready", "job_queued", "job_started", "job_finished"):
            assert re.search(rf"{event} .*input=sun.png|{event} ", story), event
        assert "state=done" in story
        assert box.ctl("reload", "vidrop.service").returncode == 0
        assert "settings_reloaded" in box.journal_text("-u", "vidrop")
        assert box.ctl("stop", "vidrop.service").returncode == 0
        assert box.show("vidrop.service", "ActiveState", "Result") == {"ActiveState": "inactive", "Result": "success"}
    finally:
        if box is not None:
            box.down()
        shutil.rmtree(work, ignore_errors=True)


def _boot(work: Path, built: Path) -> Box:
    (work / "units").mkdir()
    (work / "dist").mkdir()
    shutil.copy(built, work / "dist")
    borrowed = work / "borrowed"
    borrowed.mkdir()
    for folder in _package_folders():
        for entry in folder.iterdir():
            normalised = entry.name.lower().replace("-", "_")
            if normalised.startswith(NOT_BORROWED) or entry.suffix == ".pth" or (borrowed / entry.name).exists():
                continue
            (borrowed / entry.name).symlink_to(entry)
    (work / "vidrop.toml").write_text(
        'inbox = "/srv/vidrop/inbox"\noutbox = "/srv/vidrop/outbox"\n'
        f'[pipeline]\nmodel = "{work / "model"}"\ndevice = "cpu"\noffline = true\n[intake]\nsettle_seconds = 0.3\n'
    )
    box = Box(work / "units", rw=[work], limit=600)
    home = Path.home()  # the suite's python may live under /root (pyenv): the service user must reach it
    _sh(
        box,
        f"cp -a /etc {work / 'etc'} && mount --bind {work / 'etc'} /etc && mount -t tmpfs tmpfs /opt && "
        f"mkdir /opt/home && mount --bind {home} /opt/home && mount -t tmpfs -o mode=755 tmpfs {home} && "
        f"for entry in /opt/home/.[!.]* /opt/home/*; do [ -e $entry ] || continue; "
        f"target={home}/${{entry#/opt/home/}}; if [ -d $entry ]; then mkdir $target; else touch $target; fi; "
        "mount --bind $entry $target; done",
    )
    return box


def _sh(box: Box, command: str, check: bool = True) -> subprocess.CompletedProcess:
    result = box.exec("sh", "-c", command)
    if check:
        journal = box.journal_text("-u", "vidrop", "-n", "15") if result.returncode else ""
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}{journal}"
    return result
