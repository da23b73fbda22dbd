"""What install-systemd prepares: the settings file from the shipped template, the account, the folders."""

import os
import stat

import pytest

from vidrop.config.settings import load_settings, shipped_settings_text
from vidrop.daemon import install
from vidrop.daemon.install import Account, InstallError, ensure_account, prepare_folders, write_settings_file

NOBODY = Account(user="nobody", uid=65534, gid=65534, groups=frozenset({65534}))


def test_the_system_settings_file_is_written_from_the_template_with_debian_places_and_never_overwritten(
    tmp_path, monkeypatch
):
    system = tmp_path / "etc" / "vidrop" / "vidrop.toml"
    monkeypatch.setattr(install, "SYSTEM_CONFIG_FILE", system)
    assert write_settings_file(system)
    text = system.read_text()
    assert 'inbox = "/srv/vidrop/inbox"' in text and 'state_dir = "/var/lib/vidrop"' in text
    assert text.count("\n#") == shipped_settings_text().count("\n#")  # every comment kept
    system.write_text("# the operator's own\n")
    assert not write_settings_file(system)
    assert system.read_text() == "# the operator's own\n"


def test_a_missing_user_is_created_as_a_system_user_with_its_own_group(monkeypatch):
    commands = []

    def record(command):
        commands.append(command)
        raise InstallError("recorded")

    monkeypatch.setattr(install.os, "geteuid", lambda: 0)
    with pytest.raises(InstallError, match="recorded"):
        ensure_account("vidrop-no-such-user", run=record)
    assert commands == [
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/var/lib/vidrop"]
        + ["--shell", "/usr/sbin/nologin", "vidrop-no-such-user"]
    ]


def test_without_root_a_missing_user_is_one_line_saying_what_to_run(monkeypatch):
    monkeypatch.setattr(install.os, "geteuid", lambda: 1000)
    with pytest.raises(InstallError, match=r"^there is no user vidrop-no-such-user; run: sudo useradd --system"):
        ensure_account("vidrop-no-such-user")


def test_missing_folders_are_created_setgid_and_group_writable_and_an_unreachable_one_is_refused(tmp_path):
    config = tmp_path / "vidrop.toml"
    config.write_text('inbox = "share/in"\noutbox = "share/out"\nstate_dir = "state"\n')
    settings = load_settings(config).settings
    root = Account(user="root", uid=os.geteuid(), gid=os.getegid(), groups=frozenset({os.getegid()}))
    done = prepare_folders(settings, root, None)
    assert len(done) == 3
    assert stat.S_IMODE((tmp_path / "share" / "in").stat().st_mode) == 0o2775
    assert stat.S_IMODE((tmp_path / "share" / "out").stat().st_mode) == 0o2775
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o750
    assert prepare_folders(settings, root, None) == []  # nothing to do twice, nothing re-owned
    (tmp_path / "state").chmod(0o700)
    with pytest.raises(InstallError, match="nobody cannot write to .*; run: sudo chgrp"):
        prepare_folders(settings, NOBODY, None)


def test_an_unknown_group_is_one_line(tmp_path):
    settings = load_settings(write_empty(tmp_path)).settings
    with pytest.raises(InstallError, match="there is no group no-such-designers; run: sudo groupadd"):
        prepare_folders(settings, None, "no-such-designers")


def write_empty(folder):
    path = folder / "vidrop.toml"
    path.write_text("")
    return path
