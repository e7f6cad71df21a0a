"""Exceptions that name what went wrong and with which input."""

from __future__ import annotations


class SensoriumError(Exception):
    """Base class of sensorium's errors."""


class InputError(SensoriumError, ValueError):
    """An argument that cannot be used (a value out of range, an option that does not apply)."""


class MissingFileError(SensoriumError, FileNotFoundError):
    """A file the model needs beside its weights (tokenizer, chat template) is not there."""


class CapabilityError(SensoriumError, TypeError):
    """A model asked for something it does not do (tagging with a CLIP model, text with a vision-only one)."""


class WeightsError(SensoriumError):
    """A checkpoint that cannot be read or does not match the model. Not a ValueError: task loops skip bad
    inputs (ValueError and MediaError), and a broken checkpoint is not a bad input."""


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


def reason_for(err: BaseException, source: object = None) -> str:
    """The reason part of an error about `source`, without the input's name when the message starts with it
    (so that "skipped X: <reason>" never names X twice)."""
    reason = getattr(err, "reason", None)
    if reason:
        return reason
    text = str(err) or type(err).__name__
    if source is not None:
        prefix = f"{describe_source(source)}: "
        if text.startswith(prefix):
            return text[len(prefix):]
        plain = f"{source}: "
        if text.startswith(plain):
            return text[len(plain):]
    return text


_current = __import__("threading").local()


class reading:
    """`with reading(source):` marks the input a thread is decoding, so that warnings raised deep inside a
    decoder (Pillow's "Possibly corrupt EXIF data") can be shown with the input's name (see cli)."""

    def __init__(self, source: object):
        self.source = source

    def __enter__(self):
        self.saved = getattr(_current, "source", None)
        _current.source = self.source
        return self

    def __exit__(self, *exc):
        _current.source = self.saved


def current_input() -> object:
    """The input this thread is decoding (None outside a decoder)."""
    return getattr(_current, "source", None)
