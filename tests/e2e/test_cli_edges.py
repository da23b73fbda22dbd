"""The edges of the command line: --version, closed pipes, bad values, wrong folders: one line, never a traceback.

None of these loads a model: each is a cheap real `vidrop` process.
"""

from __future__ import annotations

import re

from tests.conftest import run_vidrop, vidrop_env


def test_version_names_vidrop_diffusers_and_torch(folders, tmp_path):
    result = run_vidrop(vidrop_env(folders, tmp_path / "no-model"), "--version")
    assert result.returncode == 0 and result.stderr == ""
    assert re.fullmatch(r"vidrop \S+ \(diffusers \S+, torch \S+\)\n", result.stdout)
