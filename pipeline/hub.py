"""The Hugging Face hub as the loader meets it: the local cache first, then one quick look whether the hub answers.

huggingface_hub retries a refused connection for some 24 s (1+2+4+8+8) before it gives up; asking the cache first,
and the hub's address once with a short timeout, makes "not here and no way to get it" a matter of seconds.
"""

from __future__ import annotations

import socket
from functools import lru_cache
from urllib.parse import urlsplit

from huggingface_hub import constants

CONNECT_SECONDS = 3.0


@lru_cache(maxsize=4)
def hub_unreachable(endpoint: str | None = None, timeout: float = CONNECT_SECONDS) -> str | None:
    """Why the hub (HF_ENDPOINT) cannot be reached, or None when it accepts a connection."""
    url = urlsplit(endpoint or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{url.hostname}:{port}: {exc.strerror or exc}"


def cache_description() -> str:
    """Where this process looks for downloaded models."""
    return f"the Hugging Face cache {constants.HF_HUB_CACHE} (HF_HOME={constants.HF_HOME})"
