"""Decode video frames with PyAV, by a sampling policy, with each frame's timestamp.

A first pass reads the packet index only (no decoding) to learn every frame's presentation time and where
the keyframes are; frame i is the i-th frame in presentation order. The decoding pass then seeks to the
keyframe before a wanted frame only when that skips work, and converts only the wanted frames to RGB.
Timestamps come from each frame's pts, so variable-frame-rate files are timed correctly. Rotation
metadata (the display matrix) is applied, as for EXIF orientation of images.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

from sensorium.errors import MediaError
from sensorium.media.audio import (ON_TRUNCATED, Tally, container_missing, ffmpeg_log, inspect_container,
                                   open_container, report_truncation, truncation_evidence, unreadable)

DEFAULT_MAX_FRAMES = 4096  # a guard against decoding a whole film into memory by accident


@dataclass(frozen=True)
class Uniform:
    """N frames at indices int(i * (T - 1) / (N - 1)): first and last included (PE-Core's video protocol).
    N = 1 takes the middle frame."""

    num_frames: int = 8

    def indices(self, times: list[float]) -> list[int]:
        total = len(times)
        if self.num_frames < 1:
            raise ValueError("num_frames must be at least 1")
        if self.num_frames == 1:
            return [(total - 1) // 2]
        return [int(i * (total - 1) / (self.num_frames - 1)) for i in range(self.num_frames)]


@dataclass(frozen=True)
class EveryFrame:
    def indices(self, times: list[float]) -> list[int]:
        return list(range(len(times)))


@dataclass(frozen=True)
class FixedRate:
    """Frames at t = 0, 1/fps, 2/fps, ... from the first frame: the frame on screen at each time
    (a frame chosen twice, when fps exceeds the video's rate, is kept once)."""

    fps: float

    def indices(self, times: list[float]) -> list[int]:
        if self.fps <= 0:
            raise ValueError("fps must be positive")
        chosen: list[int] = []
        step, k = 1.0 / self.fps, 0
        while times[0] + k * step <= times[-1] + 1e-9:
            index = max(bisect.bisect_right(times, times[0] + k * step + 1e-9) - 1, 0)
            if not chosen or chosen[-1] != index:
                chosen.append(index)
            k += 1
        return chosen


Sampling = Uniform | EveryFrame | FixedRate


@dataclass
class VideoClip:
    frames: np.ndarray  # [N, H, W, 3] uint8 RGB, upright
    indices: list[int]
    timestamps: list[float]  # seconds from the first frame
    total_frames: int
    duration: float  # seconds, first frame to the end of the last
    rotation: int  # degrees counter-clockwise that were applied


class VideoReader:
    """Index a video file once, then decode any frames of it.

    The index pass (packets only, no decoding) also checks the file against what its container declares
    (frame counts, sizes, durations: see sensorium.media.audio). A truncated file is a MediaError, or with
    on_truncated="warn" a TruncatedMediaWarning and a reader of the frames that can be decoded.

    >>> with VideoReader("clip.mp4") as video:
    ...     for index, time, rgb in video.frames(video.sample(Uniform(8))): ...
    """

    def __init__(self, source: str | os.PathLike, on_truncated: str = "error"):
        if on_truncated not in ON_TRUNCATED:
            raise ValueError(f"on_truncated must be one of {ON_TRUNCATED}, got {on_truncated!r}")
        self.source = source
        self._container = open_container(source, "a video")
        try:
            self._index(on_truncated)
        except BaseException:
            self._container.close()
            raise

    def _index(self, on_truncated: str) -> None:
        missing = container_missing(self.source, self._container.format.name)
        stream = self._stream = self._video_stream(missing)
        declared = inspect_container(self.source, self._container, stream, missing)
        pts, keyframes, tally = self._packets(stream, missing)
        if not pts:
            raise unreadable(self.source, "video", missing, "the video stream has no frames")
        base = stream.time_base or Fraction(1, 1)
        rate = stream.average_rate
        frame_seconds = float(1 / rate) if rate else 0.04
        read_seconds = _packet_seconds(tally, base, len(pts) * frame_seconds)
        evidence = truncation_evidence(declared, tally, read_seconds, frame_seconds)
        if evidence:
            report_truncation(self.source, "video", evidence, declared.seconds, read_seconds, on_truncated)
        # Frames are addressed by their pts; files without usable ones are counted by decoding instead.
        self._pts = sorted(pts) if None not in pts and len(set(pts)) == len(pts) else None
        if self._pts is not None:
            self._keyframes = sorted(keyframes)
            if evidence:
                self._pts = self._decodable_tail()
            self.times = [float((p - self._pts[0]) * base) for p in self._pts]
        else:
            self.times = self._times_by_decoding(frame_seconds)
        self.total_frames = len(self.times)
        frame_time = float(1 / rate) if rate else (self.times[-1] / (len(self.times) - 1) if len(self.times) > 1 else 0.0)
        self.duration = self.times[-1] + frame_time
        self.rotation = 0  # known once a frame is decoded

    def _video_stream(self, missing: str | None):
        if not self._container.streams.video:
            kinds = sorted({s.type for s in self._container.streams}) or ["no streams"]
            raise unreadable(self.source, "video", missing, f"no video stream (the file has: {', '.join(kinds)})")
        stream = self._container.streams.video[0]
        if stream.codec_context is None:  # a cut MP4 index (moov) can lose the codec's parameters
            raise unreadable(self.source, "video", missing, "the video stream cannot be decoded (its codec is unknown)")
        stream.thread_type = "AUTO"
        return stream

    def _packets(self, stream, missing: str | None) -> tuple[list[int | None], list[int], Tally]:
        """Every packet's pts and the keyframes' pts. A demuxer error is corruption, unless the file's
        structure shows it was cut: then it is where the truncation starts."""
        pts: list[int | None] = []
        keyframes: list[int] = []
        tally = Tally()
        with ffmpeg_log() as log:
            try:
                for packet in self._container.demux(stream):
                    if packet.size == 0:
                        continue
                    tally.saw_packet(packet)
                    if packet.pts is not None:
                        tally.saw_span(packet.pts, packet.duration or 0)
                    if packet.is_keyframe and packet.pts is not None:
                        keyframes.append(packet.pts)
                    pts.append(packet.pts)
            except av.error.FFmpegError as err:
                if not missing:
                    raise MediaError(self.source, f"corrupt or truncated video ({_ffmpeg_reason(err)})") from err
                tally.demux_error = _ffmpeg_reason(err)
            tally.log = list(log)
        return pts, keyframes, tally

    def _decodable_tail(self) -> list[int]:
        """The pts of a truncated file that the decoder can still produce: every frame before the last
        keyframe, and those that decoding from that keyframe to the end yields (a cut frame is lost)."""
        last_key = self._keyframes[-1] if self._keyframes else self._pts[0]
        produced = set()
        self._container.seek(last_key, stream=self._stream, backward=True, any_frame=False)
        try:
            for frame in self._container.decode(self._stream):
                if frame.pts is not None:
                    produced.add(frame.pts)
        except av.error.FFmpegError:
            pass  # the cut
        kept = [p for p in self._pts if p < last_key or p in produced]
        if not kept:
            raise MediaError(self.source, "truncated video: no frame of it can be decoded")
        return kept

    def _times_by_decoding(self, frame_time: float) -> list[float]:
        self._container.seek(0)
        times = []
        for frame in self._decode():
            times.append(frame.time if frame.time is not None else len(times) * frame_time)
        if not times:
            raise MediaError(self.source, "the video stream has no decodable frames")
        return [t - times[0] for t in times]

    def sample(self, sampling: Sampling) -> list[int]:
        return sampling.indices(self.times)

    def frames(self, indices: list[int]) -> Iterator[tuple[int, float, np.ndarray]]:
        """(index, seconds, HxWx3 uint8 RGB) for each wanted index, in increasing index order."""
        wanted = sorted(set(indices))
        if wanted and not 0 <= wanted[0] <= wanted[-1] < self.total_frames:
            raise IndexError(f"frame indices must be in [0, {self.total_frames}), got {wanted[0]}..{wanted[-1]}")
        if self._pts is None:
            yield from self._frames_in_decode_order(wanted)
            return
        decoder, position = None, -(2**62)  # position: pts of the last decoded frame
        for index in wanted:
            target = self._pts[index]
            keyframe = self._keyframe_before(target)
            # Seek only when going back, or when a keyframe lies between here and the target (skips decoding).
            if decoder is None or position >= target or (keyframe is not None and keyframe > position):
                start = keyframe if keyframe is not None else self._pts[0]
                self._container.seek(start, stream=self._stream, backward=True, any_frame=False)
                decoder, position = self._decode(), -(2**62)
            for frame in decoder:
                if frame.pts is None:
                    continue
                position = frame.pts
                if frame.pts >= target:
                    break
            else:
                raise MediaError(self.source, f"corrupt or truncated video: frame {index} could not be decoded")
            if frame.pts != target:
                raise MediaError(self.source, f"frame {index} (pts {target}) was not produced by the decoder")
            yield index, self.times[index], self._upright(frame)

    def _frames_in_decode_order(self, wanted: list[int]) -> Iterator[tuple[int, float, np.ndarray]]:
        self._container.seek(0)
        remaining = iter(wanted)
        target = next(remaining, None)
        for index, frame in enumerate(self._decode()):
            if target is None:
                return
            if index == target:
                yield index, self.times[index], self._upright(frame)
                target = next(remaining, None)
        if target is not None:
            raise MediaError(self.source, f"corrupt or truncated video: frame {target} could not be decoded")

    def _upright(self, frame: av.VideoFrame) -> np.ndarray:
        """RGB with the display matrix's rotation applied (counter-clockwise quarter turns)."""
        self.rotation = round(frame.rotation or 0)
        rgb = frame.to_ndarray(format="rgb24")
        turns = round(self.rotation / 90) % 4
        return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb

    def _decode(self):
        try:
            yield from self._container.decode(self._stream)
        except av.error.FFmpegError as err:
            raise MediaError(self.source, f"corrupt or truncated video ({_ffmpeg_reason(err)})") from err

    def _keyframe_before(self, target: int) -> int | None:
        i = bisect.bisect_right(self._keyframes, target) - 1
        return self._keyframes[i] if i >= 0 else None

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_video(
    source: str | os.PathLike, sampling: Sampling = Uniform(8), max_frames: int = DEFAULT_MAX_FRAMES,
    on_truncated: str = "error",
) -> VideoClip:
    """Frames of a video file chosen by `sampling`, with their indices and timestamps. `on_truncated="warn"`
    reads a truncated file's decodable frames, with a TruncatedMediaWarning."""
    with VideoReader(source, on_truncated=on_truncated) as video:
        indices = video.sample(sampling)
        if len(set(indices)) > max_frames:
            raise MediaError(
                source,
                f"{len(set(indices))} frames requested, more than max_frames={max_frames}; "
                "sample fewer (Uniform(n), FixedRate(fps)) or iterate with VideoReader.frames",
            )
        decoded = {i: (t, rgb) for i, t, rgb in video.frames(indices)}
        return VideoClip(
            frames=np.stack([decoded[i][1] for i in indices]),
            indices=list(indices),
            timestamps=[decoded[i][0] for i in indices],
            total_frames=video.total_frames,
            duration=video.duration,
            rotation=video.rotation,
        )


def _packet_seconds(tally: Tally, base: Fraction, fallback: float) -> float:
    """Seconds the packets span, the first pts to the end of the last (what could be read)."""
    if tally.first_pts is None or tally.end_pts is None or tally.end_pts <= tally.first_pts:
        return fallback
    return float((tally.end_pts - tally.first_pts) * base)


def _ffmpeg_reason(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)
