"""The error family, one root for every layer: config, pipeline and daemon all raise these.

Input errors are never retried and become an error file; generation errors may be retried; configuration
errors stop the daemon with EX_CONFIG (78).
"""

from __future__ import annotations

# The fix for a failure that another run may well not repeat (the model's): the error file says it.
TRY_AGAIN_FIX = "Try again; if it keeps failing, send the error file to the operator."


class VidropError(Exception):
    """Root of vidrop's errors: `reason` for a designer, `detail` for the log, `fix` says what to do."""

    def __init__(self, reason: str, *, detail: str = "", fix: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason
        self.fix = fix


class InputError(VidropError):
    """The dropped files cannot become a video as they are; running again would not help."""


class SidecarError(InputError):
    """A sidecar (or a folder's `_defaults.json`) that cannot be used: `reason` names the key and the value."""


class GenerationError(VidropError):
    """The model failed on a job that was valid; running it again may work."""


class ConfigError(VidropError):
    """Settings that cannot be used: `reason` is the one line the daemon prints before it exits with 78."""


class ModelUnavailable(VidropError):
    """The configured model cannot be loaded: a start-up failure, not a job failure."""
