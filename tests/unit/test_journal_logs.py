"""Events as journald fields, and the fall back to stderr when journald cannot be reached."""

import io
import json
import socket
from types import SimpleNamespace

import pytest
import structlog

from vidrop.daemon.logs import JournalLogger, configure_logging, journal_fields, journal_sender


@pytest.fixture(autouse=True)
def reset_structlog():
    yield
    structlog.reset_defaults()


def test_events_become_upper_case_journal_fields_with_a_priority():
    fields = journal_fields(
        {
            "event": "job_finished",
            "level": "warning",
            "timestamp": "2026-01-01T00:00:00Z",
            "job_id": "abc",
            "input": "a/b.png",
            "output": "a/b.error.json",
            "stage": "intake",
            "duration_ms": 12,
            "error": "not an image",
            "detail": {"size": 3},
        }
    )
    assert fields["MESSAGE"].startswith("job_finished job_id=abc input=a/b.png")
    assert fields["PRIORITY"] == "4" and fields["EVENT"] == "job_finished" and fields["SYSLOG_IDENTIFIER"] == "vidrop"
    assert (
        fields["JOB_ID"],
        fields["INPUT"],
        fields["OUTPUT"],
        fields["STAGE"],
        fields["DURATION_MS"],
        fields["ERROR"],
    ) == ("abc", "a/b.png", "a/b.error.json", "intake", "12", "not an image")
    assert json.loads(fields["DETAIL"]) == {"size": 3} and "TIMESTAMP" not in fields
    assert journal_fields({"event": "x", "level": "error"})["PRIORITY"] == "3"
    assert journal_fields({"event": "x", "level": "debug"})["PRIORITY"] == "7"


def test_a_journal_that_refuses_sends_makes_the_logger_fall_back_to_stderr_json():
    sent, stderr = [], io.StringIO()

    def refusing_send(message, **fields):
        if sent:
            raise ConnectionRefusedError(111, "Connection refused")
        sent.append((message, fields))

    configure_logging("info", "journal", stream=stderr, journal_send=refusing_send)
    log = structlog.get_logger()
    log.info("job_started", job_id="abc", input="a.png")
    log.info("job_finished", job_id="abc", input="a.png", state="done")  # journald went away
    log.info("daemon_stopped")

    assert sent[0][0].startswith("job_started") and sent[0][1]["JOB_ID"] == "abc"
    lines = [json.loads(line) for line in stderr.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["journal_unreachable", "job_finished", "daemon_stopped"]
    assert lines[0]["level"] == "warning" and "refused" in lines[0]["error"]
    assert lines[1]["job_id"] == "abc" and lines[1]["state"] == "done"


def test_no_journal_at_all_logs_to_stderr_from_the_first_event():
    stderr = io.StringIO()
    logger = JournalLogger(None, stderr)
    logger.info(event_dict={"event": "daemon_ready", "level": "info"})
    assert not logger.is_sending_to_journal
    assert [json.loads(line)["event"] for line in stderr.getvalue().splitlines()] == [
        "journal_unreachable",
        "daemon_ready",
    ]


def test_the_warning_says_which_is_missing_the_python_module_or_journald(tmp_path):
    def no_systemd_python(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    send, missing = journal_sender(import_module=no_systemd_python)
    assert send is None and "systemd Python module is not installed" in missing and "vidrop[systemd]" in missing

    listening = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listening.bind(str(tmp_path / "journal.sock"))
    try:
        send, missing = journal_sender(
            import_module=lambda name: SimpleNamespace(send=print), socket_path=listening.getsockname()
        )
        assert send is print and missing == ""
    finally:
        listening.close()
    send, missing = journal_sender(
        import_module=lambda name: SimpleNamespace(send=print), socket_path=str(tmp_path / "journal.sock")
    )
    assert send is None and "journald does not listen on" in missing and "Python module" not in missing

    stderr = io.StringIO()
    JournalLogger(None, stderr, missing="the systemd Python module is not installed")
    assert json.loads(stderr.getvalue())["error"] == "the systemd Python module is not installed"


def test_the_console_format_gives_local_times_and_a_pipe_gets_no_live_line_nor_colours():
    from datetime import datetime

    stream = io.StringIO()
    terminal = configure_logging("info", "console", stream=stream)
    structlog.get_logger().info("job_started", input="a.png")
    line = stream.getvalue()
    assert terminal is not None and terminal.progress() is None and "\x1b[" not in line
    # The machine's zone with its offset (tests/e2e/test_console.py runs a child in Asia/Tokyo).
    assert datetime.fromisoformat(line[:25]).utcoffset() == datetime.now().astimezone().utcoffset()
    assert "job_started" in line and "input=a.png" in line
    assert configure_logging("info", "json", stream=io.StringIO()) is None


def test_the_live_line_shows_the_running_job_and_goes_when_it_ends():
    from rich.console import Console

    from tests.conftest import wait_for
    from vidrop.daemon.console import JobProgress
    from vidrop.daemon.ledger.base import Job, JobState

    def job(key, name):
        fields = {"sidecar": None, "input_sha256": "a" * 64, "sidecar_sha256": None, "params": {}, "seed": 1}
        return Job(id=key, key=key, input=name, **fields, created_at=1.0, output=name)

    screen = io.StringIO()
    progress = JobProgress(Console(file=screen, force_terminal=True, width=120))
    running, other = job("r" * 16, "acme/[hero].png"), job("o" * 16, "other.png")
    progress.job_changed(running, JobState.RUNNING, {})
    progress.step(running, 3, 8)
    progress.job_changed(other, JobState.FAILED, {})  # an input refused meanwhile: the line stays
    wait_for(lambda: "acme/[hero].png  step 3 of 8" in screen.getvalue(), 10, what="the live line")
    assert progress.is_showing
    progress.job_changed(running, JobState.DONE, {})
    assert not progress.is_showing
