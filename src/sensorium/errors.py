"""Exceptions that name what went wrong and with which input."""

from __future__ import annotations


class SensoriumError(Exception):
    """Base class of sensorium's errors."""


class WeightsError(SensoriumError, ValueError):
    """A checkpoint that cannot be read or does not match the model."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """Weights that are neither local nor reachable."""


class UnknownModelError(SensoriumError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MediaError(SensoriumError, ValueError):
    """An input that cannot be decoded: the message names the input and the reason."""

    def __init__(self, source: object, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{describe_source(source)}: {reason}")


class TruncatedMediaWarning(UserWarning):
    """A file that ends before its container says it should, read anyway because the caller allowed it."""


def describe_source(source: object) -> str:
    """A printable name for an input: paths keep undecodable bytes as \\x escapes."""
    import os

    if isinstance(source, (str, os.PathLike)):
        return display_path(source)
    return f"<{type(source).__name__}>"


def display_path(path) -> str:
    """A path as text that always encodes as UTF-8 (undecodable file-name bytes become \\xNN)."""
    import os

    return os.fsencode(path).decode("utf-8", errors="backslashreplace")
