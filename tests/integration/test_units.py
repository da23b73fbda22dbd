"""The unit files rendered for this checkout by `vidrop install-systemd`: systemd accepts them; they are hardened."""

import re
import shutil

import pytest

from tests.conftest import VIDROP, run_vidrop
from tests.sdbox import in_private_tmp, make_work_dir, require_sdbox, sdbox

MAX_EXPOSURE = 3.0


@pytest.fixture
def rendered():
    work = make_work_dir("units")
    (work / "settings.toml").write_text(
        f'inbox = "{work}/in box"\noutbox = "{work}/outbox"\nstate_dir = "{work}/state"\n'
        "[service]\nstop_timeout_seconds = 45\n"
    )
    result = run_vidrop(
        {"PATH": "/usr/bin:/bin"},
        "--config",
        str(work / "settings.toml"),
        "install-systemd",
        "--output",
        str(work / "units"),
        "--watchdog-seconds",
        "120",
    )
    if in_private_tmp(VIDROP):  # a checkout under /tmp: its vidrop is hidden from a service, rightly refused
        shutil.rmtree(work)
        assert result.returncode == 78 and "temporary folder" in result.stderr, result.stderr
        pytest.skip(f"{VIDROP} is under /tmp, which a service cannot see: install-systemd refuses it (checked)")
    assert result.returncode == 0, result.stderr
    yield work, result.stdout
    shutil.rmtree(work)


def test_install_systemd_writes_both_units_for_this_install_and_prints_the_systemctl_lines(rendered):
    work, printed = rendered
    assert f"wrote {work}/units/vidrop.service" in printed and "systemctl enable --now vidrop.service" in printed
    assert "systemctl daemon-reload" in printed and "vidrop@0.service vidrop@1.service" in printed
    service = (work / "units" / "vidrop.service").read_text()
    assert f"--config {work}/settings.toml run" in service
    assert f'ReadWritePaths="{work}/in box" {work}/outbox {work}/state' in service
    assert "WatchdogSec=120" in service and "TimeoutStopSec=75" in service  # 45 s to finish a job, then 30 more
    assert "Environment=PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in service
    template = (work / "units" / "vidrop@.service").read_text()
    assert "CUDA_VISIBLE_DEVICES=%i" in template and "DeviceAllow=/dev/nvidia%i rw" in template
    assert not re.search(r"@[A-Z_]+@", service + template)


def test_units_outside_what_the_service_can_see_are_refused(tmp_path):
    (tmp_path / "settings.toml").write_text(f'inbox = "{tmp_path}/inbox"\noutbox = "{tmp_path}/outbox"\n')
    result = run_vidrop(
        {"PATH": "/usr/bin:/bin"},
        "--config",
        str(tmp_path / "settings.toml"),
        "install-systemd",
        "--output",
        str(tmp_path / "units"),
    )
    assert result.returncode == 78 and "PrivateTmp" in result.stderr
    assert not (tmp_path / "units").exists()


def test_systemd_verifies_both_units_and_rates_the_hardening_ok(rendered):
    require_sdbox()
    work, _ = rendered
    units = [work / "units" / name for name in ("vidrop.service", "vidrop@.service")]
    verified = sdbox("verify", *units)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for unit in units:
        # systemd-analyze next to a private journald: tmpfs /run, nothing written on the host.
        security = sdbox("journald", "--", "systemd-analyze", "security", "--offline=true", "--no-pager", unit)
        exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", security.stdout)
        assert exposure, security.stdout + security.stderr
        assert float(exposure.group(1)) < MAX_EXPOSURE and exposure.group(2) == "OK", exposure.group(0)
