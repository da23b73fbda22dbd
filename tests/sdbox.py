"""sdbox (../shared/tools/sdbox): a real systemd and journald for tests, isolated from the host."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO

SDBOX = REPO.parent / "shared" / "tools" / "sdbox" / "sdbox"
PRIVATE_TMP = (Path("/tmp"), Path("/var/tmp"))


def in_private_tmp(path: Path) -> bool:
    """Whether path is under /tmp or /var/tmp, which PrivateTmp=yes hides from the service."""
    resolved = path.resolve()
    return any(resolved == hidden or hidden in resolved.parents for hidden in PRIVATE_TMP)


def _outside_private_tmp(*candidates: Path) -> Path:
    """The first folder not under /tmp or /var/tmp."""
    for candidate in candidates:
        if not in_private_tmp(candidate):
            return candidate
    raise RuntimeError(f"no folder outside /tmp and /var/tmp among {candidates}")


# Folders the service must see: in the checkout, or in the home folder when the checkout is under /tmp.
WORK_ROOT = _outside_private_tmp(
    REPO / ".sdbox-work", Path.home() / ".cache" / "vidrop-sdbox-work", Path("/root/.cache/vidrop-sdbox-work")
)


def require_sdbox() -> None:
    """Skip, with sdbox's own reason, where this host cannot run it (not root, no namespaces, no cgroup2)."""
    if not SDBOX.exists():
        pytest.skip(f"sdbox not found at {SDBOX}")
    check = subprocess.run([SDBOX, "check"], capture_output=True, text=True)
    if check.returncode == 77:
        pytest.skip(f"sdbox cannot run here: {(check.stdout + check.stderr).strip()}")
    assert check.returncode == 0, check.stderr


def sdbox(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run one sdbox command."""
    return subprocess.run([str(SDBOX), *map(str, args)], capture_output=True, text=True, timeout=timeout)


class Box:
    """A booted systemd; `down()` removes it (by its recorded PID, see sdbox's README)."""

    def __init__(self, units: Path, rw: list[Path], limit: int = 600) -> None:
        booted = sdbox(
            "boot",
            "--units",
            units,
            *[arg for path in rw for arg in ("--rw", path)],
            "--limit",
            str(limit),
            "--workdir",
            WORK_ROOT,
        )
        assert booted.returncode == 0, booted.stderr
        self.id = booted.stdout.strip().splitlines()[-1].removeprefix("SDBOX_ID=")

    def ctl(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return sdbox("ctl", self.id, "--", *args, timeout=timeout)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        shown = self.ctl("show", unit, *[f"--property={name}" for name in properties])
        return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)

    def journal(self, *args: str) -> list[dict]:
        """journalctl ARGS -o json, one dict per entry."""
        result = sdbox("journal", self.id, "--", "--no-pager", "-o", "json", *args)
        return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]

    def journal_text(self, *args: str) -> str:
        return sdbox("journal", self.id, "--", "--no-pager", *args).stdout

    def exec(self, *args: str) -> subprocess.CompletedProcess:
        return sdbox("exec", self.id, "--", *args)

    def down(self) -> None:
        sdbox("down", self.id)


def make_work_dir(name: str) -> Path:
    """A fresh folder under WORK_ROOT (the caller removes it)."""
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=WORK_ROOT))
