"""Decode audio to float32 mono at the rate a model asks for, streaming, with PyAV (FFmpeg bundled).

Any file FFmpeg reads works: wav, flac, mp3, ogg/vorbis, opus, m4a/aac, and the audio track of mp4/mkv/webm/mov.
Decoding is streamed: blocks come out as the file is read, so a multi-hour file costs memory in proportion to
what the caller keeps. Two downmix rules exist because the models were trained with different loaders:

- "mean" (default): the average of the channels, computed here in float32 (AST, Audio Flamingo 3).
- "ffmpeg": FFmpeg's own downmix in its resampler, e.g. (L + R) / sqrt(2) for stereo (PE-AV's loader). A layout
  FFmpeg has no downmix matrix for (9, 11, 13, 15 or more than 16 channels of unknown roles, except 24) is
  averaged instead, as no channel has a known place.

Resampling always uses FFmpeg's resampler (swresample); it is block-invariant, so streamed and whole-file
results are identical. Numpy arrays and torch tensors are accepted with their sample rate.

Samples are checked where they enter: NaN, infinities and magnitudes beyond MAX_AMPLITUDE are errors. Files are
checked for completeness against what their container declares (see "Completeness" below): a file that ends
early is an error, or with on_truncated="warn" a TruncatedMediaWarning and the audio that could be read.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

from sensorium.errors import MediaError, TruncatedMediaWarning, display_path
from sensorium.media.files import check_file

DOWNMIX = ("mean", "ffmpeg")
ON_TRUNCATED = ("error", "warn")
# Float audio lives in [-1, 1]; int-scaled floats (peaks of 32768 or 2**23) are accepted, 1e8 and beyond is garbage.
MAX_AMPLITUDE = 1e8


def load_audio(source, sampling_rate: int, source_rate: int | None = None, downmix: str = "mean",
               on_truncated: str = "error") -> np.ndarray:
    """The whole signal as float32 mono [samples] at `sampling_rate`.

    `source` is a path, or an array/tensor (mono [samples] or [channels, samples]) whose rate is
    `source_rate`. Raises MediaError naming the input for missing, corrupt, truncated or silent-less files
    (no audio track, zero samples). `on_truncated="warn"` returns what a truncated file holds, with a
    TruncatedMediaWarning."""
    if _is_array(source):
        return array_to_mono(source, source_rate, sampling_rate)
    blocks = list(stream_audio(source, sampling_rate, downmix, on_truncated=on_truncated))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def stream_audio(source: str | os.PathLike, sampling_rate: int, downmix: str = "mean",
                 on_truncated: str = "error") -> Iterator[np.ndarray]:
    """float32 mono blocks at `sampling_rate`, as the file is decoded. Errors are raised where they are
    found: before the first block (unreadable file, no audio track), at the block that holds them (NaN,
    absurd values) or after the last (truncated or corrupt file, zero samples)."""
    if downmix not in DOWNMIX:
        raise ValueError(f"downmix must be one of {DOWNMIX}, got {downmix!r}")
    _check_choice("on_truncated", on_truncated, ON_TRUNCATED)
    container = open_container(source, "an audio file")
    try:
        missing = container_missing(source, container.format.name)
        stream = _audio_stream(source, container, missing)
        declared = inspect_container(source, container, stream, missing)
        native_rate = stream.codec_context.sample_rate or stream.rate
        to_mono = ToMono(downmix, native_rate, sampling_rate)
        tally = Tally()
        yielded = 0
        for block in _decoded_blocks(container, stream, to_mono, tally):
            check_samples(block, source, sampling_rate, yielded)
            yielded += len(block)
            yield block
        _finish(source, declared, tally, native_rate, on_truncated)
    finally:
        container.close()


def _audio_stream(source, container, missing: str | None):
    """The first audio stream; a file cut inside its index (an MP4's moov) can lose it or its codec."""
    if not container.streams.audio:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise unreadable(source, "audio", missing, f"no audio stream (the file has: {', '.join(kinds)})")
    stream = container.streams.audio[0]
    if stream.codec_context is None:
        raise unreadable(source, "audio", missing, "the audio stream cannot be decoded (its codec is unknown)")
    stream.thread_type = "AUTO"
    return stream


def _decoded_blocks(container, stream, to_mono: "ToMono", tally: "Tally") -> Iterator[np.ndarray]:
    """Mono blocks of every decodable packet; demuxer and decoder errors are recorded in `tally`, not raised,
    so that the end of the file can tell a truncation from corruption."""
    with ffmpeg_log() as log:
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as err:
                tally.demux_error = _reason(err)
                break
            tally.saw_packet(packet)
            try:
                frames = packet.decode()
            except av.error.FFmpegError as err:
                tally.decode_error(_reason(err))
                continue
            for frame in frames:
                tally.saw_frame(frame.samples)
                yield from to_mono.push(frame)
        if tally.demux_error:  # the flush packet was not reached: empty the decoder
            yield from _drain(stream, to_mono, tally)
        yield from to_mono.flush()
        tally.log = list(log)


def _drain(stream, to_mono: "ToMono", tally: "Tally") -> Iterator[np.ndarray]:
    try:
        frames = stream.decode(None)
    except av.error.FFmpegError as err:
        tally.decode_error(_reason(err))
        return
    for frame in frames:
        tally.saw_frame(frame.samples)
        yield from to_mono.push(frame)


def _finish(source, declared: "Declared", tally: "Tally", native_rate: int, on_truncated: str) -> None:
    """After the last block: zero samples, truncation (raised or warned) and corruption (raised)."""
    read_seconds = tally.samples / native_rate
    evidence = truncation_evidence(declared, tally, read_seconds, tally.longest_frame / native_rate)
    if tally.samples == 0:
        if evidence:
            raise MediaError(source, f"truncated audio: {evidence}; no audio samples could be read")
        if tally.errors or tally.demux_error:
            reason = tally.first_error or tally.demux_error
            raise MediaError(source, f"corrupt audio: no samples could be decoded ({reason})")
        raise MediaError(source, "no audio samples (the audio stream is empty)")
    if evidence:
        report_truncation(source, "audio", evidence, declared.seconds, read_seconds, on_truncated)
    elif tally.errors:
        raise MediaError(source, f"corrupt audio: {tally.errors} packet(s) could not be decoded ({tally.first_error})")
    elif tally.demux_error:
        raise MediaError(source, f"corrupt audio: the container could not be read past {read_seconds:.2f} s "
                                 f"({tally.demux_error})")


# ---------------------------------------------------------------------------------------------------------
# Downmix and resampling


class ToMono:
    """Decoded frames -> float32 mono blocks at `rate_out`, by one downmix rule, for any channel count.

    PyAV's AudioFrame.planes (and to_ndarray) walks a planar frame's data pointers until a null one; with 8 or
    more channels none of the frame's 8 inline pointers is null and it reads past them, which crashes the
    process. Planar float frames with fewer channels are read plane by plane; any other frame is first made
    packed float ("flt", one plane) by swresample at its own rate and layout, a format conversion only."""

    def __init__(self, downmix: str, rate_in: int, rate_out: int):
        self._packed = av.AudioResampler(format="flt")
        self._rate_change = Resampler(rate_in, rate_out) if rate_in != rate_out else None
        self._ffmpeg = av.AudioResampler(format="flt", layout="mono", rate=rate_out) if downmix == "ffmpeg" else None

    def push(self, frame: av.AudioFrame) -> list[np.ndarray]:
        if self._ffmpeg is not None:
            try:
                return [_packed_mono(f) for f in self._ffmpeg.resample(frame)]
            except av.error.ArgumentError:
                # swresample builds no matrix for an unordered layout without an FFmpeg default (e.g. 9 channels)
                self._ffmpeg = None
        if frame.format.name == "fltp" and frame.layout.nb_channels < 8:
            return [self._rate(channel_mean(_planes(frame)))]
        return [self._rate(channel_mean(_interleaved(f))) for f in self._packed.resample(frame)]

    def flush(self) -> list[np.ndarray]:
        if self._ffmpeg is not None:
            return [_packed_mono(f) for f in self._ffmpeg.resample(None)]
        blocks = [self._rate(channel_mean(_interleaved(f))) for f in self._packed.resample(None)]
        return blocks + ([self._rate_change.flush()] if self._rate_change else [])

    def _rate(self, block: np.ndarray) -> np.ndarray:
        return self._rate_change.push(block) if self._rate_change else block


def channel_mean(channels: list[np.ndarray]) -> np.ndarray:
    """float32 mean of the channels, summed in channel order then divided (numpy's planar mean(axis=0))."""
    if len(channels) == 1:
        return np.array(channels[0], dtype=np.float32)
    total = np.add(channels[0], channels[1], dtype=np.float32)
    for channel in channels[2:]:
        total += channel
    total /= np.float32(len(channels))
    return total


def _planes(frame: av.AudioFrame) -> list[np.ndarray]:
    """The channels of a planar float frame of fewer than 8 channels (views of its buffers)."""
    return [np.frombuffer(plane, np.float32, frame.samples) for plane in frame.planes]


def _interleaved(frame: av.AudioFrame) -> list[np.ndarray]:
    """The channels of a packed float frame (strided views of its one buffer)."""
    count = frame.layout.nb_channels
    samples = np.frombuffer(frame.planes[0], np.float32, frame.samples * count)
    return [samples[c::count] for c in range(count)]


def _packed_mono(frame: av.AudioFrame) -> np.ndarray:
    return np.frombuffer(frame.planes[0], np.float32, frame.samples).copy()


class Resampler:
    """FFmpeg's resampler over a stream of float32 mono blocks (block boundaries do not change the output)."""

    def __init__(self, rate_in: int, rate_out: int):
        self.rate_in, self.rate_out = rate_in, rate_out
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=rate_out)
        self._pts = 0
        self._time_base = Fraction(1, rate_in)

    def push(self, block: np.ndarray) -> np.ndarray:
        if not len(block):
            return np.zeros(0, np.float32)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block, dtype=np.float32)[None], format="flt",
                                           layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = self.rate_in, self._pts, self._time_base
        self._pts += len(block)
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        return self._collect(self._resampler.resample(None))

    @staticmethod
    def _collect(frames) -> np.ndarray:
        arrays = [_packed_mono(f) for f in frames]
        if len(arrays) == 1:
            return arrays[0]
        return np.concatenate(arrays) if arrays else np.zeros(0, np.float32)


def resample(signal: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """float32 mono resampled with FFmpeg's resampler (identity when the rates match)."""
    signal = np.asarray(signal, dtype=np.float32)
    if rate_in == rate_out:
        return signal
    resampler = Resampler(rate_in, rate_out)
    return np.concatenate([resampler.push(signal), resampler.flush()])


def array_to_mono(signal, source_rate: int | None, sampling_rate: int) -> np.ndarray:
    """A numpy array or torch tensor (mono [samples] or [channels, samples], channels averaged) as float32 mono at
    `sampling_rate`. One array is one signal; a batch is a list of arrays."""
    if source_rate is None:
        raise ValueError("an audio array needs its sample rate (source_rate / sampling_rate=...)")
    if hasattr(signal, "detach"):  # torch tensor
        signal = signal.detach().cpu().float().numpy()
    array = np.asarray(signal)
    if not np.issubdtype(array.dtype, np.floating):
        raise MediaError(array, f"audio arrays must hold floats in [-1, 1], got {array.dtype}")
    if array.ndim == 2:
        # one rule for every array in sensorium: channels first; a signal has more samples than channels
        if array.shape[0] > array.shape[1]:
            raise MediaError(array, f"audio array of shape {tuple(array.shape)} looks like [samples, channels]; "
                                    "pass [channels, samples] (e.g. array.T), or a list of 1-D arrays for a batch")
        array = array.mean(axis=0, dtype=np.float32)
    elif array.ndim != 1:
        raise MediaError(array, f"audio arrays must be [samples] or [channels, samples], got shape {array.shape}")
    if array.size == 0:
        raise MediaError(array, "no audio samples (empty array)")
    array = array.astype(np.float32, copy=False)
    check_samples(array, array, int(source_rate))
    return resample(array, int(source_rate), sampling_rate)


def check_samples(samples: np.ndarray, source, rate: int, offset: int = 0) -> None:
    """MediaError for NaN, infinite or absurdly large samples; `offset` (samples before this block) times the
    first bad one. Costs one max and one min over the block when all is well."""
    if not samples.size:
        return
    high, low = float(samples.max()), float(samples.min())  # NaN propagates through both
    if high <= MAX_AMPLITUDE and low >= -MAX_AMPLITUDE:
        return
    if not (np.isfinite(high) and np.isfinite(low)):
        first = int(np.flatnonzero(~np.isfinite(samples))[0])
        raise MediaError(source, f"audio contains NaN or infinite samples (first at {(offset + first) / rate:.2f} s)")
    at = int(np.argmax(np.abs(samples)))
    raise MediaError(source, f"audio samples reach {samples[at]:.4g} (at {(offset + at) / rate:.2f} s), beyond "
                             f"the {MAX_AMPLITUDE:.0e} limit: float audio is expected in [-1, 1]")


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
    return open_container(source, "an audio file")


def open_container(source, what: str):
    """`source` opened by FFmpeg, or a MediaError with the true reason (`what` names the expected content:
    "an audio file", "a video"); a file cut too short to open is said to be truncated."""
    path = check_file(source, what)
    try:
        return av.open(str(path))
    except av.error.FFmpegError as err:
        missing = container_missing(source, _sniff_format(path))
        cut = f"; the file is truncated: {missing}" if missing else ""
        raise MediaError(source, f"not a readable media file ({_reason(err)}){cut}") from err


def unreadable(source, kind: str, missing: str | None, reason: str) -> MediaError:
    """The error for a file nothing can be read from; a truncation, when the structure shows one, first."""
    if missing:
        return MediaError(source, f"truncated {kind}: {missing}; {reason}")
    return MediaError(source, reason)


# ---------------------------------------------------------------------------------------------------------
# Completeness: what the container declares against what could be read.
#
# Each container is held to what it states itself, read from its header or its last bytes (never a second
# decode): WAV's data chunk size, FLAC's STREAMINFO sample count (exact), the MP3 Xing/Info/VBRI frame count and
# the length every MPEG frame header gives its frame, Matroska's Segment size and per-track DURATION, MP4/MOV's
# box sizes and sample tables, and Ogg's end-of-stream flag on its last page. Where no exact count exists
# (Matroska), durations are compared with a tolerance of three frames plus 50 ms: on complete files the
# declared track duration exceeds the decoded one by at most the codec's priming (AAC at 8 kHz: 0.096 s, a
# quarter of the tolerance there; Opus: 8 ms).


@dataclass
class Declared:
    """What a file's container says about one stream."""

    seconds: float | None = None  # the stream's declared duration (None: not declared, or only estimated)
    samples: int | None = None  # FLAC STREAMINFO: total samples, exact
    packets: int | None = None  # MP4/MOV sample table, MP3 Xing/VBRI: packets the stream must hold
    packets_name: str = "packets"  # what the packets are called in messages ("frames")
    packet_slack: int = 0  # packets that may be missing without loss (a header counted as a frame)
    missing: str | None = None  # the file's structure shows it ends early: how
    mpeg_frames: bool = False  # MPEG audio: the last packet must be as long as its header says


class Tally:
    """What demuxing and decoding one stream actually produced."""

    def __init__(self):
        self.packets = 0
        self.samples = 0  # decoded samples (audio)
        self.longest_frame = 0
        self.errors = 0
        self.first_error = ""
        self.demux_error = ""
        self.last_packet = None
        self.first_pts: int | None = None  # in the stream's time base
        self.end_pts: int | None = None  # the largest pts + duration
        self.log: list = []

    def saw_packet(self, packet) -> None:
        if not packet.size:
            return
        self.packets += 1
        self.last_packet = packet

    def saw_span(self, pts: int, duration: int) -> None:
        """A packet's presentation span, in the stream's time base (video: what the packets cover)."""
        end = pts + duration
        self.first_pts = pts if self.first_pts is None else min(self.first_pts, pts)
        self.end_pts = end if self.end_pts is None else max(self.end_pts, end)

    def saw_frame(self, samples: int) -> None:
        self.samples += samples
        self.longest_frame = max(self.longest_frame, samples)

    def decode_error(self, reason: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or reason

    def ended_prematurely(self) -> str | None:
        """The demuxer's own word that the file stopped inside an element (Matroska without sizes)."""
        for _, name, message in self.log:
            if "ended prematurely" in message or "partial file" in message:
                return f"FFmpeg's {name} demuxer: {message.strip()}"
        return None


def truncation_evidence(declared: Declared, tally: Tally, read_seconds: float, frame_seconds: float) -> str | None:
    """Why the stream ended early, or None when it is complete as far as the container can tell."""
    if declared.samples is not None and tally.samples < declared.samples:
        return f"the FLAC header declares {declared.samples} samples, {tally.samples} could be decoded"
    if declared.packets and tally.packets < declared.packets - declared.packet_slack:
        return f"the container lists {declared.packets} {declared.packets_name} but only {tally.packets} are present"
    if declared.missing:
        return declared.missing
    cut = _mpeg_frame_cut(bytes(tally.last_packet)) if declared.mpeg_frames and tally.last_packet else None
    if cut:
        return cut
    premature = tally.ended_prematurely()
    if premature:
        return premature
    exact = declared.samples is not None or declared.packets
    if declared.seconds and not exact and read_seconds < declared.seconds - (3 * frame_seconds + 0.05):
        return "the stream stops before its declared end"
    return None


def report_truncation(source, kind: str, evidence: str, declared_seconds: float | None, read_seconds: float,
                      on_truncated: str) -> None:
    """MediaError, or with on_truncated="warn" a TruncatedMediaWarning, for a stream that ends early."""
    if declared_seconds:
        declared, read = _two_times(declared_seconds, read_seconds)
        said = f"the container declares {declared} s, only {read} s could be read"
        told = f"read {read} s of the {declared} s declared"
    else:
        said = f"only {read_seconds:.2f} s could be read"
        told = f"read {read_seconds:.2f} s (the container does not declare its duration)"
    if on_truncated == "warn":
        warnings.warn(TruncatedMediaWarning(f"{display_path(source)}: truncated {kind}: {told} ({evidence})"),
                      stacklevel=3)
        return
    raise MediaError(source, f"truncated {kind}: {evidence}; {said}")


def _two_times(declared: float, read: float) -> tuple[str, str]:
    """Both durations with enough decimals (2 to 6) to show that they differ."""
    for digits in range(2, 7):
        a, b = f"{declared:.{digits}f}", f"{read:.{digits}f}"
        if a != b:
            break
    return a, b


def container_missing(source, format_name: str) -> str | None:
    """How the file's own structure shows that it ends early (header and tail reads), or None."""
    names = set(format_name.split(","))
    size = os.path.getsize(source)
    if "wav" in names:
        return _wav_declared(source, size).missing
    if "matroska" in names:
        return _matroska_missing(source, size)
    if "mp4" in names:
        return _mp4_missing(source, size)
    if "ogg" in names:
        return _ogg_missing(source, size)
    return None


def inspect_container(source, container, stream, missing: str | None) -> Declared:
    """What the container declares about `stream`, from FFmpeg's header parse and a few header reads;
    `missing` is container_missing's finding."""
    names = set(container.format.name.split(","))
    if "matroska" in names:
        return Declared(seconds=_matroska_duration(container, stream), missing=missing)
    if "mp4" in names:
        return Declared(seconds=_stream_seconds(stream), packets=stream.frames or None, packets_name="frames",
                        missing=missing)
    if stream.type != "audio":  # the rules below are about an audio file's one stream (not its cover picture)
        return Declared(missing=missing)
    if "wav" in names:
        return _wav_declared(source, os.path.getsize(source))
    if "flac" in names:
        return _flac_declared(source, stream)
    if "mp3" in names:
        return _mp3_declared(source, stream)
    # Other containers: no declaration this code trusts (FFmpeg may have estimated a duration from the bitrate).
    return Declared(missing=missing)


def _sniff_format(path) -> str:
    """FFmpeg's name for a container recognised by its first bytes, for a file FFmpeg could not open."""
    head = _read(path, 0, 12)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska,webm"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mov,mp4,m4a,3gp,3g2,mj2"
    return ""


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _stream_seconds(stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


def _read(source, offset: int, count: int) -> bytes:
    with open(source, "rb") as f:
        f.seek(max(0, offset))
        return f.read(count)


def _id3v2_size(head: bytes) -> int:
    """Bytes of an ID3v2 tag at the start of `head` (0 without one)."""
    if head[:3] != b"ID3" or len(head) < 10:
        return 0
    size = (head[6] & 127) << 21 | (head[7] & 127) << 14 | (head[8] & 127) << 7 | (head[9] & 127)
    return 10 + size + (10 if head[5] & 0x10 else 0)


# WAV: the data chunk's size ------------------------------------------------------------------------------

def _wav_declared(source, size: int) -> Declared:
    chunks = _riff_chunks(source, size)
    data, fmt = chunks.get(b"data"), chunks.get(b"fmt ")
    if not data or data[1] in (0, 0xFFFFFFFF):  # streamed WAVs leave the size unset
        return Declared()
    offset, length = data
    seconds = None
    if fmt:
        rate, block_align = struct.unpack("<I", fmt[2][4:8])[0], struct.unpack("<H", fmt[2][12:14])[0]
        seconds = length / block_align / rate if rate and block_align else None
    missing = offset + length - size
    return Declared(seconds=seconds, missing=f"the WAV data chunk is {missing} bytes short" if missing > 0 else None)


def _riff_chunks(source, size: int) -> dict:
    """RIFF/WAVE chunks up to the data chunk: {id: (data offset, declared size[, fmt bytes])}."""
    chunks = {}
    with open(source, "rb") as f:
        header = f.read(12)
        if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return chunks
        while True:
            head = f.read(8)
            if len(head) < 8:
                return chunks
            kind, length = head[:4], struct.unpack("<I", head[4:])[0]
            if kind == b"fmt ":
                chunks[kind] = (f.tell(), length, f.read(min(length, 40)))
                f.seek(chunks[kind][0])
            if kind == b"data":
                chunks[kind] = (f.tell(), length)
                return chunks
            f.seek(length + (length & 1), os.SEEK_CUR)


# FLAC: STREAMINFO's total samples (exact) ----------------------------------------------------------------

def _flac_declared(source, stream) -> Declared:
    head = _read(source, 0, 16384)
    start = _id3v2_size(head)
    if start + 42 > len(head):
        head = _read(source, start, 42)
        start = 0
    block = head[start:start + 42]
    if block[:4] != b"fLaC" or (block[4] & 0x7F) != 0:
        return Declared(seconds=_stream_seconds(stream))
    bits = int.from_bytes(block[8 + 10:8 + 18], "big")
    rate, total = bits >> 44, bits & ((1 << 36) - 1)
    if not total or not rate:  # 0: the encoder did not know the length (a stream)
        return Declared()
    return Declared(seconds=total / rate, samples=total)


# MP3: the Xing/Info/VBRI frame count, and the length of each frame ----------------------------------------

_MPEG_BITRATES = {  # kbit/s by (MPEG-1?, layer) for bitrate index 1..14
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


@dataclass(frozen=True)
class _MpegFrame:
    length: int  # bytes, header included
    mpeg1: bool
    mono: bool


def _mpeg_header(data: bytes) -> _MpegFrame | None:
    """The frame an MPEG audio header describes (None: not a header, or a free-format bitrate)."""
    if len(data) < 4:
        return None
    h = int.from_bytes(data[:4], "big")
    version, layer_bits, index, rate_index = (h >> 19) & 3, (h >> 17) & 3, (h >> 12) & 15, (h >> 10) & 3
    if h >> 21 != 0x7FF or version == 1 or layer_bits == 0 or index in (0, 15) or rate_index == 3:
        return None
    layer, mpeg1, padding = 4 - layer_bits, version == 3, (h >> 9) & 1
    bitrate = _MPEG_BITRATES[(mpeg1, layer)][index - 1] * 1000
    rate = _MPEG_RATES[version][rate_index]
    if layer == 1:
        length = (12 * bitrate // rate + padding) * 4
    else:
        length = (144 if mpeg1 or layer == 2 else 72) * bitrate // rate + padding
    return _MpegFrame(length, mpeg1, (h >> 6) & 3 == 3)


def _mpeg_frame_cut(packet: bytes) -> str | None:
    """How an MPEG audio frame (the last packet) is cut short; None when whole or not parsable."""
    if len(packet) < 4 and packet[:1] == b"\xff":
        return f"the file ends inside an MPEG audio frame header ({len(packet)} of its 4 bytes)"
    frame = _mpeg_header(packet)
    if frame and len(packet) < frame.length:
        return f"the last MPEG audio frame is {frame.length - len(packet)} of its {frame.length} bytes short"
    return None


def _mp3_declared(source, stream) -> Declared:
    """With a Xing/Info or VBRI header, the frame count (FFmpeg's duration then comes from it too); without
    one FFmpeg estimates the duration from the bitrate, so only the last frame's length can be checked."""
    head = _read(source, 0, 16384)
    start = _id3v2_size(head)
    if start + 200 > len(head):
        head, start = _read(source, start, 4096), 0
    frame = _mpeg_header(head[start:start + 4])
    frames = _xing_frames(head[start:], frame) if frame else None
    if not frames:
        return Declared(mpeg_frames=True)
    # One frame of slack: some encoders count the Xing frame itself.
    return Declared(seconds=_stream_seconds(stream), packets=frames, packets_name="MPEG audio frames",
                    packet_slack=1, mpeg_frames=True)


def _xing_frames(first: bytes, frame: _MpegFrame) -> int | None:
    xing = (36 if not frame.mono else 21) if frame.mpeg1 else (21 if not frame.mono else 13)
    if first[xing:xing + 4] in (b"Xing", b"Info"):
        flags = struct.unpack(">I", first[xing + 4:xing + 8])[0]
        return struct.unpack(">I", first[xing + 8:xing + 12])[0] if flags & 1 else None
    if first[36:40] == b"VBRI":
        return struct.unpack(">I", first[36 + 14:36 + 18])[0]
    return None


# Matroska/WebM: the Segment's size and the tracks' DURATION tags ------------------------------------------

_EBML_HEADER, _SEGMENT = 0x1A45DFA3, 0x18538067


def _matroska_missing(source, size: int) -> str | None:
    """Bytes the Segment element declares beyond the end of the file (a live-written file leaves it unknown)."""
    head = _read(source, 0, 4096)
    position = 0
    for _ in range(8):  # the EBML header, perhaps Void elements, then the Segment
        element = _ebml_element(head, position)
        if element is None:
            return None
        ident, data_start, length = element
        if ident == _SEGMENT:
            missing = data_start + length - size if length is not None else 0
            return f"the file ends {missing} bytes before its Matroska segment does" if missing > 0 else None
        if length is None:
            return None
        position = data_start + length
    return None


def _ebml_element(data: bytes, position: int) -> tuple[int, int, int | None] | None:
    """(id, data offset, size or None when unknown) of the EBML element at `position`."""
    ident = _ebml_vint(data, position, keep_marker=True)
    if ident is None:
        return None
    size = _ebml_vint(data, ident[1], keep_marker=False)
    if size is None:
        return None
    return ident[0], size[1], size[0]


def _ebml_vint(data: bytes, position: int, keep_marker: bool) -> tuple[int | None, int] | None:
    if position >= len(data) or data[position] == 0:
        return None
    width = 9 - data[position].bit_length()
    if position + width > len(data):
        return None
    value = data[position] if keep_marker else data[position] & ((1 << (8 - width)) - 1)
    for byte in data[position + 1:position + width]:
        value = value << 8 | byte
    if not keep_marker and value == (1 << (7 * width)) - 1:  # all ones: size unknown
        return None, position + width
    return value, position + width


_DURATION_TAG = re.compile(r"^(\d+):(\d\d):(\d\d(?:\.\d+)?)$")


def _matroska_duration(container, stream) -> float | None:
    """The track's DURATION tag (FFmpeg and mkvmerge write one per track); the Segment's duration stands
    for the track only when it is the file's single stream (it is the longest track's)."""
    for key, value in stream.metadata.items():
        match = _DURATION_TAG.match(value.strip()) if key.upper().startswith("DURATION") else None
        if match:
            return int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3])
    if len(container.streams) == 1 and container.duration:
        return container.duration / 1e6
    return None


# MP4/MOV: top-level box sizes -----------------------------------------------------------------------------

def _mp4_missing(source, size: int) -> str | None:
    """The first top-level box (mdat, moov, ...) that the file ends inside of."""
    offset = 0
    with open(source, "rb") as f:
        while offset + 8 <= size:
            f.seek(offset)
            head = f.read(16)
            length, kind = struct.unpack(">I", head[:4])[0], head[4:8]
            if length == 1 and len(head) == 16:
                length = struct.unpack(">Q", head[8:16])[0]
            if length == 0:  # the last box runs to the end of the file
                return None
            if length < 8 or not all(32 <= c < 127 for c in kind):
                return None  # not a box: trailing bytes this check does not judge
            if offset + length > size:
                name = kind.decode("ascii")
                return f"the file ends {offset + length - size} bytes before its '{name}' box does"
            offset += length
    return None


# Ogg: the last page must be whole and end the stream --------------------------------------------------------

_OGG_MAX_PAGE = 27 + 255 + 255 * 255


def _ogg_missing(source, size: int) -> str | None:
    tail = _read(source, size - _OGG_MAX_PAGE - 128, _OGG_MAX_PAGE + 128)
    ends = {len(tail)}
    if tail[-128:-125] == b"TAG":  # an ID3v1 tag some taggers append
        ends.add(len(tail) - 128)
    position = len(tail)
    while (position := tail.rfind(b"OggS", 0, position)) >= 0:
        length = _ogg_page_length(tail, position)
        if length and position + length in ends:
            if tail[position + 5] & 0x04:
                return None
            return "the last Ogg page does not end the stream (no end-of-stream flag)"
    return "the file ends inside an Ogg page"


def _ogg_page_length(data: bytes, position: int) -> int | None:
    if position + 27 > len(data) or data[position + 4] != 0:
        return None
    count = data[position + 26]
    lacing = data[position + 27:position + 27 + count]
    return 27 + count + sum(lacing) if len(lacing) == count else None


# FFmpeg's log, captured per thread while a file is read ----------------------------------------------------

_log_lock = threading.Lock()
_log_users = 0
_log_saved: tuple = ()


@contextmanager
def ffmpeg_log():
    """FFmpeg's error messages from this thread, as (level, name, message), while the block runs.

    PyAV keeps FFmpeg silent by default; while any file is being read here, errors are routed to PyAV's
    capture (and repeated messages are kept: PyAV would otherwise drop a message identical to the previous
    one, even from another file). Messages of FFmpeg's own threads go to a sink instead of the terminal."""
    _log_enter()
    sink = av.logging.Capture(local=False)
    try:
        with sink, av.logging.Capture(local=True) as logs:
            yield logs
    finally:
        _log_exit()


def _log_enter() -> None:
    global _log_users, _log_saved
    with _log_lock:
        if _log_users == 0:
            _log_saved = (av.logging.get_level(), av.logging.get_skip_repeated())
            if _log_saved[0] is None:
                av.logging.set_level(av.logging.ERROR)
            av.logging.set_skip_repeated(False)
        _log_users += 1


def _log_exit() -> None:
    global _log_users
    with _log_lock:
        _log_users -= 1
        if _log_users == 0:
            level, skip = _log_saved
            if level is None:
                av.logging.set_level(None)
            av.logging.set_skip_repeated(skip)


def _is_array(source) -> bool:
    return isinstance(source, np.ndarray) or hasattr(source, "detach")


def _reason(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)
