"""The core's one rule that a grep can check: only the recorder writes a job's outcome."""

from __future__ import annotations

import re
from pathlib import Path

DAEMON = Path(__file__).resolve().parents[2] / "daemon"
# jobs.jsonl lines, error documents, finished ledger states, the job_finished event.
OUTCOME_WRITES = re.compile(r"\.append_job_line\(|\.commit_failure\(|ledger\.(finish|fail)\(|[\"']job_finished[\"']")


def test_only_the_recorder_writes_a_jobs_outcome():
    writers = {
        path.relative_to(DAEMON).as_posix()
        for path in DAEMON.rglob("*.py")
        if not path.relative_to(DAEMON).as_posix().startswith("ledger/")  # the ledger's own methods
        and OUTCOME_WRITES.search(path.read_text(encoding="utf-8"))
    }
    assert writers == {"recorder.py"}
