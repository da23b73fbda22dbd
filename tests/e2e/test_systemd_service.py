"""The real thing: systemd (in sdbox) runs vidrop.service as `vidrop install-systemd` wrote it for this checkout.

One box for the module; the tests run in order on the same service, as an operator would use it.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3

import pytest

from tests.conftest import HARNESS, VIDROP, Faults, drop, drop_job, make_image, wait_for
from tests.sdbox import Box, make_work_dir, require_sdbox
from vidrop.config.settings import DEFAULT_IGNORE

pytestmark = pytest.mark.e2e
UNIT = "vidrop.service"
WATCHDOG_SECONDS = 10  # above the slowest silent stretch (decode + encode) on a busy 2-core machine


def service_faults(work) -> Faults:
    """What the service's test harness injects: slow-* inputs step slowly, the first hang-* one hangs the loop."""
    return Faults(
        slow_inputs=["slow-*"],
        slow_step_seconds=0.4,
        hang_inputs=["hang-*"],
        hang_marker=work / "state" / "test-hang-marker",
    )


def settings_toml(work, **intake) -> str:
    ignore = f"ignore = {json.dumps(list(DEFAULT_IGNORE) + intake['ignore'])}" if "ignore" in intake else ""
    return f"""
inbox = "{work}/inbox"
outbox = "{work}/outbox"
state_dir = "{work}/state"
log_level = "{intake.get("log_level", "info")}"
[pipeline]
model = "{work}/model"
device = "cpu"
fit = "{intake.get("fit", "crop")}"
offline = true
[intake]
settle_seconds = 0.3
pairing_seconds = 2
tick_seconds = 0.2
decode_grace_seconds = 3
{ignore}
[service]
stop_timeout_seconds = 1
"""


@pytest.fixture(scope="module")
def service(demo_models):
    require_sdbox()
    work = make_work_dir("service")
    box = None
    try:
        for name in ("inbox", "outbox", "state", "elsewhere"):
            (work / name).mkdir()
        shutil.copytree(demo_models["ltx"], work / "model")  # the session's model is under /tmp: PrivateTmp
        (work / "settings.toml").write_text(settings_toml(work))
        rendered = _install_systemd(work)
        assert rendered.returncode == 0, rendered.stderr
        _write_harness_drop_in(work)
        _write_probe_unit(work)
        box = Box(work / "units", rw=[work / name for name in ("inbox", "outbox", "state", "elsewhere")])
        yield box, work
    finally:
        if box is not None:
            box.down()
        shutil.rmtree(work, ignore_errors=True)


def _install_systemd(work):
    import subprocess

    return subprocess.run(
        [
            str(VIDROP),
            "--config",
            str(work / "settings.toml"),
            "install-systemd",
            "--output",
            str(work / "units"),
            "--watchdog-seconds",
            str(WATCHDOG_SECONDS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _write_harness_drop_in(work):
    """vidrop.service as install-systemd wrote it, but started through the test harness with its faults: the
    drop-in replaces ExecStart= (same arguments) and adds the harness's Environment=; the rest is the unit's own."""
    [exec_start] = re.findall(r"(?m)^ExecStart=(.*)$", (work / "units" / UNIT).read_text())
    _vidrop, arguments = exec_start.split(" ", 1)
    environment = " ".join(f"'{name}={value}'" for name, value in service_faults(work).environment().items())
    drop_in = work / "units" / f"{UNIT}.d" / "test.conf"
    drop_in.parent.mkdir()
    drop_in.write_text(
        f"[Service]\nExecStart=\nExecStart={VIDROP.parent / 'python'} {HARNESS} {arguments}\n"
        f"Environment={environment}\n"
    )


def _write_probe_unit(work):
    """vidrop.service's sandbox around a probe that tries to write where the service may and may not."""
    text = (work / "units" / UNIT).read_text()
    text = re.sub(
        r"(?m)^(Type|ExecStart|ExecReload|WatchdogSec|Restart|RestartSec|RestartPreventExitStatus)=.*$", "", text
    )
    probe = f"""
import json, os
results = {{}}
for name, path in [("outbox", "{work}/outbox/.probe"), ("state", "{work}/state/.probe"),
                   ("var_lib", "/var/lib/probe"), ("elsewhere", "{work}/elsewhere/probe"),
                   ("usr", "/usr/probe"), ("tmp", "/tmp/vidrop-probe")]:
    try:
        open(path, "w").close()
        results[name] = "written"
    except OSError as exc:
        results[name] = exc.strerror
home = "/root" if os.path.exists("/root/.pyenv") else "/home"  # read-only where the interpreter lives there
try:
    open(os.path.join(home, ".vidrop-probe"), "w").close()
    results["home"] = "written"
except OSError as exc:
    results["home"] = exc.strerror
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
results["cap_eff"] = status["CapEff"].strip()
results["no_new_privs"] = status["NoNewPrivs"].strip()
json.dump(results, open("{work}/state/probe.json", "w"))
"""
    (work / "probe.py").write_text(probe)
    text = text.replace("[Service]", f"[Service]\nType=oneshot\nExecStart={VIDROP.parent / 'python'} {work}/probe.py")
    (work / "units" / "vidrop-probe.service").write_text(text)


def wait_in(box, condition, timeout, what):
    """wait_for, and on a timeout the unit's last journal lines in the failure."""
    try:
        return wait_for(condition, timeout, what=what)
    except pytest.fail.Exception:
        pytest.fail(
            f"timed out after {timeout} s waiting for {what}; journal:\n" + box.journal_text("-u", UNIT, "-n", "40")
        )


def status_text(box) -> str:
    return box.show(UNIT, "StatusText")["StatusText"]


def events(box, *matches):
    return box.journal("-u", UNIT, *matches)


def test_start_returns_after_ready_status_follows_a_job_and_the_journal_has_its_fields(service):
    box, work = service
    started = box.ctl("start", UNIT)
    assert started.returncode == 0, started.stderr + box.journal_text("-u", UNIT)
    # Type=notify: `systemctl start` came back only after READY=1, which follows the model load.
    assert events(box, "EVENT=model_loaded")
    shown = box.show(UNIT, "ActiveState", "SubState", "StatusText")
    assert (shown["ActiveState"], shown["SubState"]) == ("active", "running")
    assert shown["StatusText"] == "idle, 0 queued"

    drop_job(work / "inbox", "slow-one", steps=8)
    seen = []

    def running_status():
        seen.append(status_text(box))
        return re.fullmatch(r"job 1 of 1: slow-one\.png, step [3-7]/8, ETA \d+ s", seen[-1])

    wait_in(box, running_status, 120, what="StatusText to show the job")
    wait_in(box, lambda: (work / "outbox" / "slow-one.json").exists(), 120, what="the manifest")
    assert (work / "outbox" / "slow-one.mp4").stat().st_size > 0
    wait_in(box, lambda: status_text(box) == "idle, 0 queued", 30, what="idle again")

    job_id = json.loads((work / "outbox" / "slow-one.json").read_text())["job_id"]
    story = events(box, f"JOB_ID={job_id}")
    assert [entry["EVENT"] for entry in story][:2] == ["job_queued", "job_started"]
    finished = [entry for entry in story if entry["EVENT"] == "job_finished"][0]
    assert finished["INPUT"] == "slow-one.png" and finished["OUTPUT"].endswith("slow-one.mp4")
    assert finished["STAGE"] == "encode" and int(finished["DURATION_MS"]) > 0 and finished["PRIORITY"] == "6"
    assert finished["MESSAGE"].startswith("job_finished") and finished["SYSLOG_IDENTIFIER"] == "vidrop"

    # A bad input: a warning with the error, found with journalctl -p warning.
    drop(work / "inbox" / "broken.json", '{"prompt": ')
    drop(work / "inbox" / "broken.png", make_image(work / "sources" / "broken.png").read_bytes())
    wait_in(box, lambda: (work / "outbox" / "broken.error.json").exists(), 60, what="the error file")
    warnings = [e for e in events(box, "-p", "warning") if e.get("EVENT") == "job_finished"]
    assert warnings and warnings[0]["INPUT"] == "broken.png" and "not valid JSON" in warnings[0]["ERROR"]
    assert warnings[0]["PRIORITY"] == "4" and warnings[0]["STAGE"] == "intake"


def test_reload_applies_a_changed_ignore_list_and_names_what_needs_a_restart(service):
    box, work = service
    (work / "settings.toml").write_text(settings_toml(work, ignore=["draft-*"], fit="pad"))
    reloaded = box.ctl("reload", UNIT)
    assert reloaded.returncode == 0, reloaded.stderr
    wait_in(box, lambda: events(box, "EVENT=settings_reloaded"), 30, what="the reload")
    assert json.loads(events(box, "EVENT=settings_reloaded")[0]["CHANGED"]) == ["intake.ignore"]
    restart = events(box, "EVENT=settings_need_restart")[0]
    assert json.loads(restart["SETTINGS"]) == ["pipeline.fit"] and restart["PRIORITY"] == "4"
    wait_in(box, lambda: box.show(UNIT, "ActiveState")["ActiveState"] == "active", 30, what="active after reload")

    drop_job(work / "inbox", "draft-one")
    drop_job(work / "inbox", "final-one")
    wait_in(box, lambda: (work / "outbox" / "final-one.json").exists(), 120, what="the job that is not ignored")
    assert not list((work / "outbox").glob("draft-one*"))
    assert not events(box, "INPUT=draft-one.png")


def test_a_hung_main_loop_makes_the_watchdog_restart_vidrop_and_the_job_completes(service):
    box, work = service
    assert box.show(UNIT, "NRestarts")["NRestarts"] == "0"
    drop_job(work / "inbox", "hang-one")
    wait_in(box, lambda: events(box, "EVENT=test_hang"), 60, what="the injected hang")
    wait_in(
        box,
        lambda: int(box.show(UNIT, "NRestarts")["NRestarts"]) >= 1,
        WATCHDOG_SECONDS + 60,
        what="the watchdog to restart vidrop",
    )
    assert "Watchdog timeout" in box.journal_text("-u", UNIT)
    wait_in(box, lambda: box.show(UNIT, "SubState")["SubState"] == "running", 120, what="running again")
    # The interrupted job was queued again at the next start; its second attempt does not hang.
    wait_in(box, lambda: (work / "outbox" / "hang-one.json").exists(), 120, what="the interrupted job's manifest")
    assert json.loads((work / "outbox" / "hang-one.json").read_text())["attempts"] == 2


def test_stop_during_a_job_exits_cleanly_and_queues_the_job_again(service):
    box, work = service
    drop_job(work / "inbox", "slow-long", steps=100)
    wait_in(box, lambda: "slow-long.png, step 2/100" in status_text(box), 120, what="the long job running")
    stopped = box.ctl("stop", UNIT)
    assert stopped.returncode == 0, stopped.stderr
    shown = box.show(UNIT, "ActiveState", "Result", "ExecMainStatus")
    assert (shown["ActiveState"], shown["Result"], shown["ExecMainStatus"]) == ("inactive", "success", "0")
    abandoned = events(box, "EVENT=job_abandoned")
    assert abandoned and abandoned[-1]["INPUT"] == "slow-long.png"
    with sqlite3.connect(work / "state" / "ledger.sqlite3") as db:
        assert db.execute("SELECT state FROM jobs WHERE input = 'slow-long.png'").fetchone() == ("queued",)
    assert not (work / "outbox" / "slow-long.mp4").exists()


def test_the_hardening_holds(service):
    box, work = service
    probed = box.ctl("start", "vidrop-probe.service")
    assert probed.returncode == 0, probed.stderr + box.journal_text("-u", "vidrop-probe.service")
    results = json.loads((work / "state" / "probe.json").read_text())
    assert results["outbox"] == results["state"] == "written"
    assert results["var_lib"] == results["elsewhere"] == results["usr"] == "Read-only file system"
    assert results["home"] in ("Read-only file system", "Permission denied")  # ProtectHome=read-only or yes
    assert results["tmp"] == "written" and box.exec("test", "-e", "/tmp/vidrop-probe").returncode != 0  # private
    assert results["cap_eff"] == "0000000000000000" and results["no_new_privs"] == "1"


def test_a_broken_config_fails_the_unit_without_a_restart_loop(service):
    box, work = service
    restarts = box.show(UNIT, "NRestarts")["NRestarts"]
    (work / "settings.toml").write_text(settings_toml(work, log_level="loud"))
    assert box.ctl("start", UNIT).returncode != 0
    shown = box.show(UNIT, "ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
    # 78 (EX_CONFIG) is in RestartPreventExitStatus: failed for good, not "auto-restart".
    assert (shown["ActiveState"], shown["SubState"], shown["Result"]) == ("failed", "failed", "exit-code")
    assert shown["ExecMainStatus"] == "78" and shown["NRestarts"] == restarts
    assert "log_level" in box.journal_text("-u", UNIT, "-n", "20")
