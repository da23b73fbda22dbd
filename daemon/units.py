"""systemd unit files for this install: the templates in systemd/ with this checkout's paths filled in."""

from __future__ import annotations

import grp
import math
import re
import sys
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

from vidrop.config.settings import LoadedSettings

REPO = Path(__file__).resolve().parents[1]
UNIT_NAMES = ("vidrop.service", "vidrop@.service")
HOME_ROOTS = (Path("/home"), Path("/root"), Path("/run/user"))
PRIVATE_TMP_ROOTS = (Path("/tmp"), Path("/var/tmp"))
GPU_GROUPS = ("video", "render")
PLACEHOLDER = re.compile(r"@[A-Z_]+@")
DEFAULT_WATCHDOG_SECONDS = 300  # longer than a VAE decode plus encoding, which send no step callbacks
STOP_MARGIN_SECONDS = 30  # after stop_timeout_seconds: one more step, the requeue, the goodbye


class UnitError(Exception):
    """The units cannot be written for these settings (a path the service could not see)."""


@dataclass(frozen=True)
class UnitOptions:
    """What the person installing chooses; the rest comes from the settings."""

    user: str | None = None
    watchdog_seconds: int = DEFAULT_WATCHDOG_SECONDS
    vidrop: Path | None = None
    group: str | None = None  # the designers' group that owns the inbox and outbox (SupplementaryGroups=)


def render_units(loaded: LoadedSettings, options: UnitOptions) -> dict[str, str]:
    """Both unit files, by name, rendered for these settings."""
    settings = loaded.settings
    vidrop = options.vidrop or Path(sys.executable).parent / "vidrop"
    if loaded.config_file is None:
        raise UnitError("no settings file: pass --config FILE so the service reads the same settings")
    config = loaded.config_file.absolute()
    writable = [settings.inbox, settings.outbox, settings.state_dir]
    models = [Path(source) for source in settings.pipeline.offered_models().values()]
    # The interpreter behind the virtualenv may live elsewhere (pyenv under /root, say): it must stay visible.
    interpreter = [Path(sys.executable).resolve(), Path(sys.base_prefix).resolve()]
    readable = [vidrop, config, *interpreter, *(model.absolute() for model in models if model.exists())]
    for path in writable + readable:
        if any(path.is_relative_to(root) for root in PRIVATE_TMP_ROOTS):
            raise UnitError(
                f"{path} is in a temporary folder, which the service cannot see (PrivateTmp=yes); "
                "move it outside /tmp and /var/tmp"
            )
    under_home = any(path.is_relative_to(root) for path in writable + readable for root in HOME_ROOTS)
    values = {
        "README": str(_readme()),
        "VIDROP": _quote(vidrop),
        "CONFIG": _quote(config),
        "STATE_DIR": _quote(settings.state_dir),
        "USER": f"User={options.user}" if options.user else "# no User=: runs as root (install-systemd --user NAME)",
        "WATCHDOG_SEC": str(options.watchdog_seconds),
        "TIMEOUT_STOP_SEC": str(math.ceil(settings.service.stop_timeout_seconds) + STOP_MARGIN_SECONDS),
        "READ_WRITE_PATHS": " ".join(_quote(path) for path in writable),
        "PROTECT_HOME": "read-only" if under_home else "yes",
        "SUPPLEMENTARY_GROUPS": _supplementary_groups(options.group),
        "GPU_DEVICE_ALLOW": "\n".join(f"DeviceAllow={path} rw" for path in _gpu_devices()) or "# no /dev/nvidiaN here",
    }
    return {name: _fill(unit_template(name), values) for name in UNIT_NAMES}


def unit_template(name: str) -> str:
    """A unit template as shipped: package data of the wheel (vidrop/systemd/), the checkout's systemd/ folder."""
    return resources.files("vidrop").joinpath("systemd", name).read_text(encoding="utf-8")


def write_units(units: dict[str, str], directory: Path) -> list[Path]:
    """Write the unit files into a directory (normally /etc/systemd/system)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in units.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def systemctl_lines(directory: Path) -> list[str]:
    """What to run after writing the units."""
    lines = [
        "systemctl daemon-reload",
        "systemctl enable --now vidrop.service",
        "# or one instance per GPU instead: systemctl enable --now vidrop@0.service vidrop@1.service",
        "systemctl status vidrop.service",
        "journalctl -u vidrop.service -f",
    ]
    if directory != Path("/etc/systemd/system"):
        lines.insert(0, f"# the units are in {directory}; systemd reads /etc/systemd/system")
    return lines


def _readme() -> Path:
    """The README of this checkout, or installed from a wheel, the package's METADATA (which holds it)."""
    if (REPO / "README.md").is_file():
        return REPO / "README.md"
    try:
        files = metadata.distribution("vidrop").files or []
    except metadata.PackageNotFoundError:
        return REPO / "README.md"
    found = [file for file in files if file.name == "METADATA"]
    return Path(found[0].locate()).resolve() if found else REPO / "README.md"


def _fill(template: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        template = template.replace(f"@{name}@", value)
    unknown = PLACEHOLDER.findall(template)
    if unknown:
        raise UnitError(f"a unit template has placeholders install-systemd does not know: {', '.join(unknown)}")
    return template


def _quote(path: Path | str) -> str:
    text = str(path)
    return f'"{text}"' if any(char.isspace() for char in text) else text


def _supplementary_groups(share_group: str | None = None) -> str:
    present = [name for name in (*GPU_GROUPS, *([share_group] if share_group else [])) if _group_exists(name)]
    if not present:
        return "# no video or render group on this machine"
    return "SupplementaryGroups=" + " ".join(present)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _gpu_devices() -> list[Path]:
    return sorted(path for path in Path("/dev").glob("nvidia[0-9]*") if path.name[6:].isdigit())
