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
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from sensorium.errors import MediaError

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

    >>> with VideoReader("clip.mp4") as video:
    ...     for index, time, rgb in video.frames(video.sample(Uniform(8))): ...
    """

    def __init__(self, source: str | os.PathLike):
        self.source = source
        path = Path(source)
        if not path.exists():
            raise MediaError(source, "no such file")
        if path.is_dir():
            raise MediaError(source, "is a directory, not a video")
        if path.stat().st_size == 0:
            raise MediaError(source, "empty file (0 bytes)")
        try:
            self._container = av.open(str(path))
        except av.error.FFmpegError as err:
            raise MediaError(source, f"not a readable media file ({_ffmpeg_reason(err)})") from err
        try:
            self._index()
        except BaseException:
            self._container.close()
            raise

    def _index(self) -> None:
        if not self._container.streams.video:
            kinds = sorted({s.type for s in self._container.streams}) or ["no streams"]
            raise MediaError(self.source, f"no video stream (the file has: {', '.join(kinds)})")
        stream = self._stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        pts: list[int | None] = []
        keyframes: list[int] = []
        try:
            for packet in self._container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.is_keyframe and packet.pts is not None:
                    keyframes.append(packet.pts)
                pts.append(packet.pts)
        except av.error.FFmpegError as err:
            raise MediaError(self.source, f"corrupt or truncated video ({_ffmpeg_reason(err)})") from err
        if not pts:
            raise MediaError(self.source, "the video stream has no frames")
        listed = stream.frames
        if listed and len(pts) < listed:
            raise MediaError(
                self.source, f"truncated video: the container lists {listed} frames but only {len(pts)} are present"
            )
        base = stream.time_base or Fraction(1, 1)
        rate = stream.average_rate
        # Frames are addressed by their pts; files without usable ones are counted by decoding instead.
        self._pts = sorted(pts) if None not in pts and len(set(pts)) == len(pts) else None
        if self._pts is not None:
            self._keyframes = sorted(keyframes)
            self.times = [float((p - self._pts[0]) * base) for p in self._pts]
        else:
            self.times = self._times_by_decoding(float(1 / rate) if rate else 0.04)
        self.total_frames = len(self.times)
        frame_time = float(1 / rate) if rate else (self.times[-1] / (len(self.times) - 1) if len(self.times) > 1 else 0.0)
        self.duration = self.times[-1] + frame_time
        self.rotation = 0  # known once a frame is decoded

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
    source: str | os.PathLike, sampling: Sampling = Uniform(8), max_frames: int = DEFAULT_MAX_FRAMES
) -> VideoClip:
    """Frames of a video file chosen by `sampling`, with their indices and timestamps."""
    with VideoReader(source) as video:
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


def _ffmpeg_reason(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)
