"""Decode audio to float32 mono at the rate a model asks for, streaming, with PyAV (FFmpeg bundled).

Any file FFmpeg reads works: wav, flac, mp3, ogg/vorbis, opus, m4a/aac, and the audio track of mp4/mkv/webm/mov.
Decoding is streamed: blocks come out as the file is read, so a multi-hour file costs memory in proportion to
what the caller keeps. Two downmix rules exist because the models were trained with different loaders:

- "mean" (default): the average of the channels, computed here in float32 (AST, Audio Flamingo 3).
- "ffmpeg": FFmpeg's own downmix in its resampler, e.g. (L + R) / sqrt(2) for stereo (PE-AV's loader).

Resampling always uses FFmpeg's resampler (swresample); it is block-invariant, so streamed and whole-file
results are identical. Numpy arrays and torch tensors are accepted with their sample rate.
"""

from __future__ import annotations

import os
import struct
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from sensorium.errors import MediaError

DOWNMIX = ("mean", "ffmpeg")


def load_audio(source, sampling_rate: int, source_rate: int | None = None, downmix: str = "mean") -> np.ndarray:
    """The whole signal as float32 mono [samples] at `sampling_rate`.

    `source` is a path, or an array/tensor (mono [samples] or [channels, samples]) whose rate is
    `source_rate`. Raises MediaError naming the input for missing, corrupt, truncated or silent-less files
    (no audio track, zero samples)."""
    if _is_array(source):
        return array_to_mono(source, source_rate, sampling_rate)
    blocks = list(stream_audio(source, sampling_rate, downmix))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def stream_audio(source: str | os.PathLike, sampling_rate: int, downmix: str = "mean") -> Iterator[np.ndarray]:
    """float32 mono blocks at `sampling_rate`, as the file is decoded. Errors are raised where they are
    found: before the first block (unreadable file, no audio track) or after the last (truncated file,
    zero samples)."""
    if downmix not in DOWNMIX:
        raise ValueError(f"downmix must be one of {DOWNMIX}, got {downmix!r}")
    container = _open(source)
    try:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise MediaError(source, f"no audio stream (the file has: {', '.join(kinds)})")
        stream = container.streams.audio[0]
        stream.thread_type = "AUTO"
        native_rate = stream.codec_context.sample_rate or stream.rate
        if downmix == "ffmpeg":
            to_mono = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
            rate_change = None
        else:
            to_mono = av.AudioResampler(format="fltp")  # planar float at the native rate and layout
            rate_change = Resampler(native_rate, sampling_rate) if native_rate != sampling_rate else None
        decoded = 0
        try:
            for frame in container.decode(stream):
                decoded += frame.samples
                for converted in to_mono.resample(frame):
                    block = _mono(converted, downmix)
                    yield rate_change.push(block) if rate_change else block
            for converted in to_mono.resample(None):
                block = _mono(converted, downmix)
                yield rate_change.push(block) if rate_change else block
        except av.error.FFmpegError as err:
            raise MediaError(source, f"corrupt or truncated audio ({_reason(err)})") from err
        if rate_change:
            yield rate_change.flush()
        if decoded == 0:
            raise MediaError(source, "no audio samples (the audio stream is empty)")
        _check_complete(source, container, stream, decoded / native_rate)
    finally:
        container.close()


def _mono(frame: av.AudioFrame, downmix: str) -> np.ndarray:
    planes = frame.to_ndarray()  # [channels, samples] float32 (planar) or [1, samples] (flt mono)
    if planes.shape[0] == 1 or downmix == "ffmpeg":
        return np.ascontiguousarray(planes[0], dtype=np.float32)
    return planes.mean(axis=0, dtype=np.float32)


class Resampler:
    """FFmpeg's resampler over a stream of float32 mono blocks (block boundaries do not change the output)."""

    def __init__(self, rate_in: int, rate_out: int):
        self.rate_in, self.rate_out = rate_in, rate_out
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=rate_out)
        self._pts = 0

    def push(self, block: np.ndarray) -> np.ndarray:
        if not len(block):
            return np.zeros(0, np.float32)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block, dtype=np.float32)[None], format="flt",
                                           layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = self.rate_in, self._pts, Fraction(1, self.rate_in)
        self._pts += len(block)
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        return self._collect(self._resampler.resample(None))

    @staticmethod
    def _collect(frames) -> np.ndarray:
        arrays = [f.to_ndarray()[0] for f in frames]
        return np.concatenate(arrays).astype(np.float32, copy=False) if arrays else np.zeros(0, np.float32)


def resample(signal: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """float32 mono resampled with FFmpeg's resampler (identity when the rates match)."""
    signal = np.asarray(signal, dtype=np.float32)
    if rate_in == rate_out:
        return signal
    resampler = Resampler(rate_in, rate_out)
    return np.concatenate([resampler.push(signal), resampler.flush()])


def array_to_mono(signal, source_rate: int | None, sampling_rate: int) -> np.ndarray:
    """A numpy array or torch tensor (mono [samples] or [channels, samples]) as float32 mono at `sampling_rate`."""
    if source_rate is None:
        raise ValueError("an audio array needs its sample rate (source_rate / sampling_rate=...)")
    if hasattr(signal, "detach"):  # torch tensor
        signal = signal.detach().cpu().float().numpy()
    array = np.asarray(signal)
    if not np.issubdtype(array.dtype, np.floating):
        raise MediaError(array, f"audio arrays must hold floats in [-1, 1], got {array.dtype}")
    if array.ndim == 2:
        if array.shape[0] > 16 >= array.shape[1]:
            raise MediaError(array, f"audio array of shape {array.shape} looks like [samples, channels]; "
                                    "pass [channels, samples] (e.g. array.T)")
        array = array.mean(axis=0, dtype=np.float32)
    elif array.ndim != 1:
        raise MediaError(array, f"audio arrays must be [samples] or [channels, samples], got shape {array.shape}")
    if array.size == 0:
        raise MediaError(array, "no audio samples (empty array)")
    if not np.isfinite(array).all():
        raise MediaError(array, "audio array contains NaN or infinite values")
    return resample(array.astype(np.float32, copy=False), int(source_rate), sampling_rate)


def audio_duration(source: str | os.PathLike) -> float | None:
    """Seconds of audio the file's header declares (None when it does not say)."""
    container = _open(source)
    try:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        return container.duration / 1e6 if container.duration else None
    finally:
        container.close()


def _open(source):
    path = Path(source)
    if not path.exists():
        raise MediaError(source, "no such file")
    if path.is_dir():
        raise MediaError(source, "is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise MediaError(source, "empty file (0 bytes)")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as err:
        raise MediaError(source, f"not a readable media file ({_reason(err)})") from err


def _check_complete(source, container, stream, decoded_seconds: float) -> None:
    """A file whose header promises clearly more audio than could be decoded was cut short."""
    declared = None
    if stream.duration and stream.time_base:
        declared = float(stream.duration * stream.time_base)
    wav_bytes = _wav_data_shortfall(source)
    if wav_bytes:
        raise MediaError(source, f"truncated audio: the WAV header declares {wav_bytes} more bytes than the file holds")
    if declared and decoded_seconds < declared - max(0.5, 0.1 * declared):
        raise MediaError(source, f"truncated audio: the header says {declared:.2f} s but only "
                                 f"{decoded_seconds:.2f} s could be decoded")


def _wav_data_shortfall(source) -> int:
    """Bytes of a WAV file's data chunk missing from the file (0 when complete or not a WAV)."""
    try:
        with open(source, "rb") as f:
            header = f.read(12)
            if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
                return 0
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return 0
                kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if kind == b"data":
                    if size in (0, 0xFFFFFFFF):  # streamed WAVs leave the size unset
                        return 0
                    available = os.path.getsize(source) - f.tell()
                    return max(0, size - available)
                f.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return 0


def _is_array(source) -> bool:
    return isinstance(source, np.ndarray) or hasattr(source, "detach")


def _reason(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)
