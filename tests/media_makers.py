"""Media files made at test time: numpy signals written with soundfile, or encoded with PyAV (FFmpeg).

Every maker returns the path it wrote. Signals are deterministic (seeded), so a test can recompute them.
"""

from __future__ import annotations

import fractions
import io
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np
import soundfile


def signal(seconds: float, rate: int, channels: int, seed: int = 0, peak: float = 0.5) -> np.ndarray:
    """float32 [samples, channels]: a different tone plus a little noise in each channel."""
    n = max(1, round(seconds * rate))
    t = np.arange(n) / rate
    noise = np.random.default_rng(seed).standard_normal((n, channels)) * 0.05
    tones = np.sin(2 * np.pi * t[:, None] * (220.0 + 55.0 * np.arange(channels))[None])
    return (peak * np.clip(tones * 0.8 + noise, -1, 1)).astype(np.float32)


def write_soundfile(path, seconds: float, rate: int, channels: int, subtype: str | None = None,
                    samples: np.ndarray | None = None) -> Path:
    """WAV, FLAC or OGG (by suffix) through libsndfile."""
    data = signal(seconds, rate, channels) if samples is None else samples
    with soundfile.SoundFile(path, "w", rate, data.shape[1], subtype=subtype) as out:
        for start in range(0, len(data), 8192):  # libsndfile 1.2 crashes on long Vorbis writes in one call
            out.write(data[start:start + 8192])
    return Path(path)


def _audio_frames(samples: np.ndarray, rate: int, layout: str | int, chunk: int = 4096):
    """Packed float frames (PyAV's planar frames are unsafe beyond 8 channels)."""
    layout = _layout(layout)
    for start in range(0, len(samples), chunk):
        block = np.ascontiguousarray(samples[start:start + chunk])
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="flt", layout=layout.name)
        frame.sample_rate, frame.pts, frame.time_base = rate, start, fractions.Fraction(1, rate)
        yield frame


def _layout(channels: int | str):
    """A named layout ("5.1", "22.2") as given; a channel count as mono, stereo or an unordered layout
    ("9 channels"), which is what a plain WAV or a PCM track without a channel mask carries."""
    if isinstance(channels, str):
        return av.AudioLayout(channels)
    return av.AudioLayout({1: "mono", 2: "stereo"}.get(channels, f"{channels} channels"))


def _add_audio(out, codec: str, rate: int, channels: int | str, bit_rate: int | None, options: dict | None,
               vbr_quality: int | None):
    stream = out.add_stream(codec, rate=rate, options=options or {})
    stream.codec_context.layout = _layout(channels)
    if bit_rate:
        stream.codec_context.bit_rate = bit_rate
    if vbr_quality is not None:  # FFmpeg's -q:a
        stream.codec_context.qscale = True
        stream.codec_context.global_quality = vbr_quality * 118  # FF_QP2LAMBDA
    if codec in ("vorbis", "opus"):
        stream.codec_context.options = {**(options or {}), "strict": "experimental"}
    return stream


class _Unseekable(io.RawIOBase):
    """A file FFmpeg can only write forwards, as a pipe or a live recording: sizes are never patched in."""

    def __init__(self, path):
        self._file = open(path, "wb")

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._file.write(data)

    def close(self) -> None:
        self._file.close()
        super().close()


@contextmanager
def _output(path, fmt: str | None, container_options: dict | None, seekable: bool):
    target = str(path) if seekable else _Unseekable(path)
    fmt = fmt or (None if seekable else {".mkv": "matroska", ".mka": "matroska", ".webm": "webm"}[Path(path).suffix])
    try:
        with av.open(target, "w", format=fmt, container_options=container_options or {}) as out:
            yield out
    finally:
        if not seekable:
            target.close()


def encode_audio(path, codec: str, seconds: float, rate: int = 48000, channels: int | str = 2,
                 bit_rate: int | None = None, container_options: dict | None = None, options: dict | None = None,
                 vbr_quality: int | None = None, samples: np.ndarray | None = None, fmt: str | None = None,
                 seekable: bool = True) -> Path:
    """An audio-only file encoded by FFmpeg: `codec` (flac, pcm_s16le, libmp3lame, libvorbis/vorbis, libopus,
    aac, ...) in the container the suffix names (or `fmt`); `seekable=False` writes it as a pipe would."""
    count = _layout(channels).nb_channels
    data = signal(seconds, rate, count) if samples is None else samples
    with _output(path, fmt, container_options, seekable) as out:
        stream = _add_audio(out, codec, rate, channels, bit_rate, options, vbr_quality)
        for frame in _audio_frames(data, rate, channels):
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return Path(path)


def encode_video(path, seconds: float, fps: float = 25, codec: str = "libx264", size=(64, 48),
                 audio_codec: str | None = None, audio_rate: int = 48000, audio_channels: int = 2,
                 pts_ms: list[int] | None = None, gop: int = 12, container_options: dict | None = None,
                 audio_seconds: float | None = None, fmt: str | None = None, seekable: bool = True) -> Path:
    """A video (frame i is a flat grey of level 8*i), optionally with a sound track; `pts_ms` gives
    explicit presentation times (variable frame rate); `seekable=False` writes it as a pipe would."""
    width, height = size
    count = len(pts_ms) if pts_ms is not None else max(1, round(seconds * fps))
    with _output(path, fmt, container_options, seekable) as out:
        video = out.add_stream(codec, rate=fractions.Fraction(fps).limit_denominator(1001))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.gop_size = gop
        if pts_ms is not None:
            video.codec_context.time_base = video.time_base = fractions.Fraction(1, 1000)
        audio = None
        if audio_codec:
            audio = _add_audio(out, audio_codec, audio_rate, audio_channels, None, None, None)
        frames = []
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 8 * i % 256, np.uint8), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], fractions.Fraction(1, 1000)
            frames.append(frame)
        sound = signal(seconds if audio_seconds is None else audio_seconds, audio_rate, audio_channels)
        _mux_interleaved(out, video, frames, audio, sound, audio_rate, count / fps)
    return Path(path)


def _mux_interleaved(out, video, frames, audio, sound, audio_rate, video_seconds):
    """Video frames and audio blocks in time order, so the muxer interleaves them as a real file would."""
    audio_frames = list(_audio_frames(sound, audio_rate, sound.shape[1], chunk=1024)) if audio else []
    events = [(i / len(frames) * video_seconds, 0, f) for i, f in enumerate(frames)]
    events += [(f.pts / audio_rate, 1, f) for f in audio_frames]
    for _, kind, frame in sorted(events, key=lambda e: (e[0], e[1])):
        stream = audio if kind else video
        for packet in stream.encode(frame):
            out.mux(packet)
    for stream in (video, audio) if audio else (video,):
        for packet in stream.encode(None):
            out.mux(packet)
