"""The error family lives in config/errors.py (every layer raises it); these names stay importable from here."""

from config.errors import GenerationError, InputError, ModelUnavailable, VidropError

__all__ = ["GenerationError", "InputError", "ModelUnavailable", "VidropError"]
