"""Which filesystem holds the inbox: inotify cannot see what other machines write to a network mount."""

from __future__ import annotations

import os
from pathlib import Path

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "davfs",
        "fuse",
        "fuseblk",
        "ncpfs",
        "coda",
        "ocfs2",
        "virtiofs",
    }
)


def filesystem_type(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str:
    """The type of the filesystem mounted at the longest mount point that contains path ('' if unknown)."""
    target = os.path.realpath(path)
    best_point, best_type = "", ""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        fields = line.split()
        try:
            separator = fields.index("-")
        except ValueError:
            continue
        point = _unescape(fields[4])
        is_inside = target == point or target.startswith(point.rstrip("/") + "/")
        if is_inside and len(point) >= len(best_point):
            best_point, best_type = point, fields[separator + 1]
    return best_type


def is_network_filesystem(fs_type: str) -> bool:
    """NFS, SMB/CIFS, FUSE (sshfs, rclone, ...) and other mounts where remote writes raise no inotify events."""
    return fs_type in NETWORK_FILESYSTEMS or fs_type.startswith("fuse.")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field
