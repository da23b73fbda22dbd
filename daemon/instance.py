"""Who this process is in the ledger: host, pid, device, and a token that also names its temporary files."""

from __future__ import annotations

import os
import secrets
import socket

from vidrop.daemon.ledger.base import Instance


def this_instance(device: str, now: float) -> Instance:
    """A fresh identity for this process; the token makes a restarted pid a new instance."""
    host = socket.gethostname()
    token = secrets.token_hex(4)
    return Instance(
        id=f"{host}:{os.getpid()}:{token}",
        host=host,
        pid=os.getpid(),
        device=device,
        started_at=now,
        seen_at=now,
        status="starting",
    )


def instance_token(instance_id: str) -> str:
    """The token at the end of an instance id."""
    return instance_id.rsplit(":", 1)[-1]
