"""Installed, vidrop is one import name: its wheel sits beside PyPI's python-daemon, and either uninstalls alone.

The wheel is built from a copy of this checkout and installed without dependencies into a fresh virtualenv that
borrows the project venv's packages (torch and the rest) through a .pth file, less anything of vidrop's or
python-daemon's: what the fresh venv imports as vidrop can only come from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e

# Not part of a build: the project venv, outputs, caches, what the tests and the daemon leave behind.
NOT_COPIED = {".git", ".venv", "build", "state", ".sdbox-work", ".pytest_cache", ".ruff_cache", "__pycache__"}
# Kept out of the borrowed packages, so that the fresh venv has only what this test installs of them.
NOT_BORROWED = ("vidrop", "__editable__", "daemon", "python_daemon", "lockfile")
SOURCE_PACKAGES = ("config", "daemon", "pipeline")
PYTHON_DAEMON = "import daemon; print(daemon.DaemonContext.__name__, daemon.__file__)"
VIDROP_MODULES = "import vidrop.daemon.cli, vidrop.daemon.units as units; print(units.__file__)"
# What install-systemd reads, from the installed package (importlib.resources), never from a checkout.
VIDROP_PACKAGE_DATA = (
    "from vidrop.daemon import units; from vidrop.config import settings; "
    "print(units.unit_template('vidrop.service').count('[Service]'), "
    "units.unit_template('vidrop@.service').count('[Service]'), settings.shipped_settings_text().count('inbox'))"
)
VIDROP_EVERYTHING = "import vidrop.daemon.app"  # the daemon, the pipeline, torch and diffusers (slow: once)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """vidrop's wheel, built from a copy of the checkout with the project venv's setuptools."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=_not_copied)
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    result = subprocess.run(
        [*build, "--wheel-dir", str(work / "dist"), str(source)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (work / "dist").glob("vidrop-*.whl")
    return built


def test_the_wheel_holds_only_vidrop_at_the_top_with_every_package_and_its_data(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/RECORD"))
        record = archive.read(f"{dist_info}/RECORD").decode()
        top_level = archive.read(f"{dist_info}/top_level.txt").decode().split()
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    recorded = [line.split(",")[0] for line in record.splitlines() if line]
    assert {name.split("/")[0] for name in recorded} == {"vidrop", dist_info}
    assert top_level == ["vidrop"]
    assert "vidrop = vidrop.daemon.cli:main" in entry_points
    packages = [
        f"vidrop/{init.parent.relative_to(REPO).as_posix()}/__init__.py"
        for root in SOURCE_PACKAGES
        for init in (REPO / root).glob("**/__init__.py")
    ]
    assert set(packages) <= set(recorded), "a package of the checkout is missing from [tool.setuptools] packages"
    assert "vidrop/__init__.py" in recorded
    assert {
        "vidrop/config/vidrop.toml",
        "vidrop/daemon/gallery/templates/folder.html",
        "vidrop/systemd/vidrop.service",
        "vidrop/systemd/vidrop@.service",
    } <= set(recorded)


def test_vidrop_and_python_daemon_share_a_venv_and_each_uninstalls_alone(wheel, tmp_path):
    venv = _fresh_venv(tmp_path)
    site_packages = _site_packages(venv)
    _pip(venv, "install", "--no-deps", "--no-index", str(wheel))
    _pip(venv, "install", "python-daemon")  # from the registry: PyPI's, with its own top-level `daemon`

    # Both at once: python-daemon's DaemonContext and the whole of vidrop, from this venv's site-packages.
    assert _python_daemon(venv).startswith(f"DaemonContext {site_packages / 'daemon'}")
    _assert_vidrop_works(venv, site_packages)
    _run(venv, "python", "-c", VIDROP_EVERYTHING)

    _pip(venv, "uninstall", "--yes", "python-daemon")
    _assert_vidrop_works(venv, site_packages)
    assert "ModuleNotFoundError: No module named 'daemon'" in _run(venv, "python", "-c", PYTHON_DAEMON, check=False)

    _pip(venv, "install", "python-daemon")
    _pip(venv, "uninstall", "--yes", "vidrop")
    assert _python_daemon(venv).startswith(f"DaemonContext {site_packages / 'daemon'}")
    assert "No module named 'vidrop'" in _run(venv, "python", "-c", VIDROP_MODULES, check=False)
    assert not (venv / "bin" / "vidrop").exists()


def _not_copied(folder: str, names: list[str]) -> set[str]:
    ignored = {name for name in names if name in NOT_COPIED or name.endswith(".egg-info")}
    if Path(folder) == REPO:
        ignored |= {"inbox", "outbox"}  # a person's dropped files: no part of the package
    return ignored


def _fresh_venv(tmp_path: Path) -> Path:
    """A new venv (no pip of its own) that sees the project venv's packages, less vidrop's and python-daemon's."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    borrowed = tmp_path / "borrowed"
    borrowed.mkdir()
    for folder in _package_folders():
        for entry in folder.iterdir():
            normalised = entry.name.lower().replace("-", "_")
            if normalised.startswith(NOT_BORROWED) or entry.suffix == ".pth" or (borrowed / entry.name).exists():
                continue
            (borrowed / entry.name).symlink_to(entry)
    (_site_packages(venv) / "borrowed.pth").write_text(f"{borrowed}\n")
    return venv


def _package_folders() -> list[Path]:
    """Where this interpreter imports installed packages from: its sys.path less the standard library and the
    checkout (a venv's site-packages, and whatever its .pth files add)."""
    stdlib = {Path(sysconfig.get_path(name)).resolve() for name in ("stdlib", "platstdlib")}
    stdlib |= {folder / "lib-dynload" for folder in stdlib}
    folders = [Path(entry or ".").resolve() for entry in sys.path]
    return [folder for folder in dict.fromkeys(folders) if folder.is_dir() and folder not in stdlib | {REPO}]


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _pip(venv: Path, *args: str) -> str:
    """pip (borrowed) run by the venv's own python, so that it installs into and uninstalls from that venv."""
    return _run(venv, "python", "-m", "pip", *args)


def _python_daemon(venv: Path) -> str:
    return _run(venv, "python", "-c", PYTHON_DAEMON).strip()


def _assert_vidrop_works(venv: Path, site_packages: Path) -> None:
    assert "usage: vidrop" in _run(venv, "vidrop", "--help")
    assert '"prompt"' in _run(venv, "vidrop", "schema")
    units = Path(_run(venv, "python", "-c", VIDROP_MODULES).strip())
    assert units == site_packages / "vidrop" / "daemon" / "units.py"
    assert (site_packages / "vidrop" / "systemd" / "vidrop.service").is_file()  # what install-systemd fills in
    service, instance, inbox_mentions = _run(venv, "python", "-c", VIDROP_PACKAGE_DATA).split()
    assert (service, instance) == ("1", "1") and int(inbox_mentions) > 0


def _run(venv: Path, program: str, *args: str, check: bool = True) -> str:
    """A program of the venv, outside the checkout and without PYTHONPATH: nothing but the venv to import from."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIDROP_"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(
        [str(venv / "bin" / program), *args], cwd=venv, env=env, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    if check:
        assert result.returncode == 0, f"{program} {' '.join(args)}: {output}"
    else:
        assert result.returncode != 0, f"{program} {' '.join(args)} should have failed: {output}"
    return output
