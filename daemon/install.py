"""What `vidrop install-systemd` prepares before the units: the settings file, the service account, its folders.

Each step either does its work (as root) or stops with one line saying what to run; nothing existing is
overwritten or re-owned: an inbox that already exists is the share's, and only checked.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vidrop.config.settings import SYSTEM_CONFIG_FILE, Settings, shipped_settings_text

# Where the system's settings put things when install-systemd writes /etc/vidrop/vidrop.toml.
SYSTEM_PLACES = {"inbox": "/srv/vidrop/inbox", "outbox": "/srv/vidrop/outbox", "state_dir": "/var/lib/vidrop"}
SHARE_MODE = 0o2775  # group-writable, setgid: what anyone drops or vidrop writes belongs to the folder's group
STATE_MODE = 0o750
NOLOGIN = "/usr/sbin/nologin"

Runner = Callable[[Sequence[str]], None]


class InstallError(Exception):
    """One step cannot be done here; the message says what to run instead."""


@dataclass(frozen=True)
class Account:
    user: str
    uid: int
    gid: int
    groups: frozenset[int]


def run_command(command: Sequence[str]) -> None:
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise InstallError(f"{' '.join(command)} failed: {(result.stderr or result.stdout).strip()}")


def write_settings_file(path: Path) -> bool:
    """Write the shipped, commented settings to path unless a file is there already (never overwritten)."""
    if path.exists():
        return False
    text = shipped_settings_text()
    if path == SYSTEM_CONFIG_FILE:
        for name, place in SYSTEM_PLACES.items():
            text = re.sub(rf'(?m)^{name} = "[^"]*"', f'{name} = "{place}"', text, count=1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InstallError(f"cannot write {path} ({exc.strerror}); run install-systemd with sudo") from None
    return True


def ensure_account(user: str, run: Runner = run_command) -> Account:
    """The service's account; a system user and its group are created (useradd --system) where absent."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        command = ["useradd", "--system", "--user-group", "--no-create-home"]
        command += ["--home-dir", SYSTEM_PLACES["state_dir"], "--shell", NOLOGIN, user]
        if os.geteuid() != 0:
            raise InstallError(f"there is no user {user}; run: sudo {' '.join(command)}") from None
        run(command)
        entry = pwd.getpwnam(user)
    groups = {group.gr_gid for group in grp.getgrall() if user in group.gr_mem}
    return Account(user=user, uid=entry.pw_uid, gid=entry.pw_gid, groups=frozenset(groups | {entry.pw_gid}))


def prepare_folders(settings: Settings, account: Account | None, group: str | None) -> list[str]:
    """Create the inbox, outbox and state folders that are missing; check the service can use them all."""
    gid = _group_id(group) if group else (account.gid if account else os.getegid())
    uid = account.uid if account else os.geteuid()
    done = []
    own_gid = account.gid if account else os.getegid()
    folders = (
        (settings.inbox, SHARE_MODE, gid),
        (settings.outbox, SHARE_MODE, gid),
        (settings.state_dir, STATE_MODE, own_gid),
    )
    for path, mode, gid in folders:
        if not path.exists():
            if os.geteuid() != 0 and (account or group):
                owner = f"{account.user if account else os.geteuid()}:{gid}"
                raise InstallError(f"{path} does not exist; run: sudo install -d -o {owner} -m {mode:o} {path}")
            path.mkdir(parents=True)
            os.chown(path, uid, gid)
            os.chmod(path, mode)
            done.append(f"created {path} ({uid}:{gid} {mode:o})")
        if account is not None and not _can_use(path, account):
            raise InstallError(
                f"{account.user} cannot write to {path}; run: sudo chgrp {gid} {path} && sudo chmod 2775 {path} "
                f"(and make every folder above it searchable)"
            )
    return done


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise InstallError(f"there is no group {name}; run: sudo groupadd {name}") from None


def _can_use(path: Path, account: Account) -> bool:
    """Whether the account may search every folder down to path and write into path (by its mode bits)."""
    folders = [*reversed(path.absolute().parents), path.absolute()]
    for folder in folders:
        needed = (os.X_OK | os.W_OK) if folder == path.absolute() else os.X_OK
        if not _allowed(folder.stat(), account, needed):
            return False
    return True


def _allowed(info: os.stat_result, account: Account, needed: int) -> bool:
    if account.uid == 0:
        return True
    if info.st_uid == account.uid:
        bits = (info.st_mode >> 6) & 7
    elif info.st_gid in account.groups:
        bits = (info.st_mode >> 3) & 7
    else:
        bits = info.st_mode & 7
    return bits & needed == needed and stat.S_ISDIR(info.st_mode)


def prepare_service(config: str | None, user: str | None, group: str | None) -> tuple[Path, Account | None, list[str]]:
    """The settings file (written from the template where absent: --config, $VIDROP_CONFIG, else
    /etc/vidrop/vidrop.toml) and the service's account (created where absent); what was done."""
    from vidrop.config.settings import CONFIG_ENV_VAR

    path = Path(config or os.environ.get(CONFIG_ENV_VAR) or SYSTEM_CONFIG_FILE)
    done = [f"wrote {path} (the shipped settings; change inbox, outbox or model there, then reload vidrop)"]
    if not write_settings_file(path):
        done = []
    if user is None:
        return path, None, done
    existed = _user_exists(user)
    account = ensure_account(user)
    done += [] if existed else [f"created the system user and group {user} (useradd --system)"]
    if group:
        account = Account(account.user, account.uid, account.gid, account.groups | {_group_id(group)})
    return path, account, done
