"""The error family. Input errors are never retried and become an error file; generation errors may be."""

from __future__ import annotations


class VidropError(Exception):
    """Root of vidrop's errors: `reason` for a designer, `detail` for the log, `fix` says what to do."""

    def __init__(self, reason: str, *, detail: str = "", fix: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason
        self.fix = fix


class InputError(VidropError):
    """The dropped files cannot become a video as they are; running again would not help."""


class GenerationError(VidropError):
    """The model failed on a job that was valid; running it again may work."""


class ModelUnavailable(VidropError):
    """The configured model cannot be loaded: a start-up failure, not a job failure."""
