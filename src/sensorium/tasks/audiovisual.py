"""PE-AV in `embed` and `classify`: one vector per file from its sound, its pictures, or both.

Which head serves which input (`modality="auto"`), decided by the file's streams, not its extension:
* sound only (an .mp4 without pictures too) -> `audio_embeds` (compare with text through the "audio" text head),
* pictures and sound -> `audio_visual_embeds` (text head "audio_visual"),
* pictures only -> `visual_embeds` (text head "visual").
`modality` can force "audio", "video" or "audio_video" for every input.

PE-AV was trained on clips of up to 30 s. Longer inputs are cut into `window`-second windows every `hop`
seconds (default 30 and 30; the last window is aligned to the end so every moment is seen by a full window);
the file's vector is the mean of its window embeddings, L2-normalised, and the rule is recorded with the
output. Within a window, the 16-frame models take 16 frames at int(i * (T - 1) / 15) of the window's T frames,
the others every frame, as the original processors do for a clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from sensorium.batches import VideoBatch
from sensorium.errors import MediaError, SensoriumError
from sensorium.features.windows import window_starts
from sensorium.tasks.inputs import MediaItem

WINDOW_SECONDS = 30.0
MODALITIES = ("auto", "audio", "video", "audio_video")
TEXT_HEAD = {"audio": "audio", "video": "visual", "audio_video": "audio_visual"}


@dataclass
class AVResult:
    item: MediaItem
    modality: str  # "audio" | "video" | "audio_video"
    embedding: np.ndarray | None = None  # float32 [D], L2-normalised mean of the window embeddings
    windows: list[tuple[float, float]] = field(default_factory=list)
    frames: int = 0  # video frames used, all windows together
    error: str | None = None


def is_audio_visual(model) -> bool:
    from sensorium.tasks.capabilities import AudioVideoEmbedder

    return isinstance(model, AudioVideoEmbedder)


def windows_for(duration: float, window: float, hop: float) -> list[tuple[float, float]]:
    """(start, end) seconds: every `hop`, the last aligned to the end; one window for short media."""
    starts = window_starts(duration, window, hop)
    return [(float(s), min(float(s) + window, duration)) for s in starts]


def check_av_options(modality: str = "auto", window: float | None = None, hop: float | None = None,
                     text_head: str | None = None) -> None:
    import math

    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    for name, value in (("window", window), ("hop", hop)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if text_head is not None and text_head not in TEXT_HEAD.values():
        raise ValueError(f"text_head must be one of {', '.join(TEXT_HEAD.values())}, got {text_head!r}")


def _kind(item: MediaItem, modality: str) -> str:
    """Which head serves this file: from its streams (auto), or the forced modality once the streams it
    needs are checked."""
    from sensorium.media.probe import probe

    streams = probe(item.path)
    if streams.still:
        raise MediaError(item.path, "an image; PE-AV embeds audio and video (use a PE-Core model for images)")
    if modality == "auto":
        if streams.audio:
            return "audio_video" if streams.video else "audio"
        if streams.video:
            return "video"
        raise MediaError(item.path, "no audio or video stream")
    if modality in ("audio", "audio_video") and not streams.audio:
        raise MediaError(item.path, f"no audio stream (--modality {modality} needs the sound)")
    if modality in ("video", "audio_video") and not streams.video:
        raise MediaError(item.path, f"no video stream (--modality {modality} needs pictures)")
    return modality


@dataclass
class WindowVectors:
    kind: str  # "audio" | "video" | "audio_video": the head that made them
    duration: float  # seconds
    spans: list[tuple[float, float]]
    vectors: torch.Tensor  # [len(spans), D] float32, the head's raw outputs
    frames: int  # video frames used, all windows together


def encode_item(model, item: MediaItem, modality: str = "auto", window: float = WINDOW_SECONDS,
                hop: float | None = None, on_truncated: str = "error") -> AVResult:
    """Decode one file and embed it with a PE-AV model (see the module docstring)."""
    found = encode_windows(model, item, modality, window, hop, on_truncated)
    mean = found.vectors.mean(dim=0)
    return AVResult(item, found.kind, F.normalize(mean, dim=-1).cpu().numpy(), found.spans, found.frames)


def encode_windows(model, item: MediaItem, modality: str = "auto", window: float = WINDOW_SECONDS,
                   hop: float | None = None, on_truncated: str = "error") -> WindowVectors:
    """One raw head output per `window`-second window every `hop` seconds (the last aligned to the end)."""
    with WindowReader(model, item, modality, window, hop, on_truncated) as reader:
        vectors, frames_used = [], 0
        for _, _, audio, video in reader:
            vectors.append(encode_window(model, reader.kind, audio, video))
            frames_used += 0 if video is None else video.pixel_values_videos.shape[1]
        found = torch.cat(vectors).float()
        if not bool(torch.isfinite(found).all()):
            raise MediaError(item.path, "the model's output is not finite (NaN or inf) for this input")
        return WindowVectors(reader.kind, reader.duration, reader.spans, found, frames_used)


def encode_window(model, kind: str, audio, video, frame_features: torch.Tensor | None = None) -> torch.Tensor:
    """The raw output [1, D] of the head that serves `kind` for one window's inputs (with its frame features
    when they were computed already, see FrameBatcher)."""
    if kind == "audio_video":
        return model.encode_audio_video(audio, video, frame_features=frame_features)
    if kind == "audio":
        return model.encode_audio(audio)
    return model.encode_video(video, frame_features=frame_features)


class FrameBatcher:
    """Windows of several files sharing frame-encoder batches: a window with video waits until `frames` frames are
    pending (or `flush()`), then all pending windows' frames go through the frame encoder together and each window
    finishes alone (video encoder, fusion, head); a window without video finishes at once. A -16-frame model's
    windows would otherwise run the encoder 16 frames at a time, and a short clip's last frames alone. `add` and
    `flush` return (key, raw head output [D]) for each window they finished; the keys say which. `frames`
    defaults to the frame encoder's own batch on the model's device (frame_chunk: 8 on a CPU, where bigger batches
    are slower per frame, so that a window flushes alone; 32 on a GPU)."""

    def __init__(self, model, frames: int | None = None):
        from sensorium.models.pe_av import frame_chunk

        self.model, self.frames = model, frames or frame_chunk(model.device)
        self.pending: list[tuple[object, str, object, VideoBatch]] = []
        self.count = 0

    @torch.inference_mode()
    def add(self, key, kind: str, audio, video: VideoBatch | None) -> list[tuple[object, torch.Tensor]]:
        if video is None:
            return [(key, encode_window(self.model, kind, audio, None)[0])]
        self.pending.append((key, kind, audio, video))
        self.count += video.pixel_values_videos.shape[1]
        return self.flush() if self.count >= self.frames else []

    @torch.inference_mode()
    def flush(self) -> list[tuple[object, torch.Tensor]]:
        if not self.pending:
            return []
        stacks = [video.pixel_values_videos[0] for _, _, _, video in self.pending]  # each window: [F, 3, S, S]
        pixels = stacks[0] if len(stacks) == 1 else torch.cat(stacks)
        features = self.model.frame_features(VideoBatch(pixels[None], torch.ones(1, len(pixels), dtype=torch.bool)))[0]
        done, at = [], 0
        for (key, kind, audio, video), stack in zip(self.pending, stacks):
            done.append((key, encode_window(self.model, kind, audio, video, features[None, at : at + len(stack)])[0]))
            at += len(stack)
        self.pending, self.count = [], 0
        return done


class WindowReader:
    """The decoding side of `encode_windows`, usable in a thread of its own: opening it decodes the sound and
    indexes the video (`kind`, `duration`, `spans` are then known); iterating yields (start, end, audio features
    or None, VideoBatch or None) per window, frames decoded as the windows come."""

    def __init__(self, model, item: MediaItem, modality: str = "auto", window: float = WINDOW_SECONDS,
                 hop: float | None = None, on_truncated: str = "error"):
        from sensorium.media.audio import load_audio
        from sensorium.media.video import VideoReader

        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}")
        if item.error:
            raise MediaError(item.path, item.error)
        self.model, self.item = model, item
        self.kind = _kind(item, modality)
        self.video = VideoReader(item.path, on_truncated=on_truncated) if self.kind != "audio" else None
        try:
            self.signal = None
            if self.kind != "video":
                try:
                    self.signal = load_audio(item.path, model.sampling_rate, downmix="ffmpeg", on_truncated=on_truncated)
                    if len(self.signal) == 0:
                        raise MediaError(item.path, "no audio samples")
                except MediaError as err:
                    if not (modality == "auto" and self.kind == "audio_video" and "no audio samples" in err.reason):
                        raise
                    self.kind, self.signal = "video", None  # a sound track without sound: the pictures alone
            self.duration = len(self.signal) / model.sampling_rate if self.signal is not None else self.video.duration
            self.spans = windows_for(self.duration, window, hop or window)
        except BaseException:
            self.close()
            raise

    def __iter__(self):
        from sensorium.features.video_frames import squash_frames_uint8
        from sensorium.media.video import Uniform

        model, rate, squashed = self.model, self.model.sampling_rate, {}
        for number, (start, end) in enumerate(self.spans):
            audio = video = None
            if self.signal is not None:
                clip = self.signal[int(round(start * rate)) : int(round(end * rate))]
                audio = model.preprocess_audio([clip], sampling_rate=rate)
            if self.video is not None:
                times = self.video.times
                inside = [i for i, t in enumerate(times) if start <= t < end] or \
                    [min(range(len(times)), key=lambda i: abs(times[i] - start))]
                if model.video_frames:
                    inside = [inside[k] for k in Uniform(model.video_frames).indices(inside)]
                # squashed as they are decoded, straight into the window's stack (a window of full-size frames
                # would not fit in memory), in uint8 (exact: the squash rounds to it; 0.34 MB a 336 px frame, not
                # 1.35); the frames the next window shares are kept for it, so each frame is decoded once
                rows: dict[int, list[int]] = {}
                for row, i in enumerate(inside):  # a short window's 16 samples repeat frames
                    rows.setdefault(i, []).append(row)
                size = model.frame_size
                pixels = torch.empty(len(inside), 3, size, size, dtype=torch.uint8)
                for i in rows.keys() & squashed.keys():
                    pixels[rows[i]] = squashed[i]
                for i, _, rgb in self.video.frames(sorted(rows.keys() - squashed.keys())):
                    pixels[rows[i]] = squash_frames_uint8(rgb[None], size)[0]
                following = self.spans[number + 1][0] if number + 1 < len(self.spans) else float("inf")
                squashed = {i: pixels[found[0]].clone() for i, found in rows.items() if times[i] >= following}
                video = VideoBatch(pixels[None], torch.ones(1, len(inside), dtype=torch.bool))
            yield start, end, audio, video

    def close(self) -> None:
        if self.video is not None:
            self.video.close()

    def __enter__(self) -> "WindowReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


ANNOUNCE_FRAMES = 256  # an every-frame run reading more frames than this is announced before it starts


@dataclass(frozen=True)
class FrameCost:
    videos: int
    frames: int  # frame-encoder passes the run will make (a frame in two overlapping windows counts twice)
    frames_16: int  # what a -16-frame model would make on the same windows
    seconds_per_frame: float  # one frame-encoder pass on this model's device, measured

    def message(self, model) -> str:
        eta = self.frames * self.seconds_per_frame
        when = f"{eta / 60:.0f} min" if eta >= 120 else f"{eta:.0f} s"
        return (f"{model.name} reads every video frame: {self.videos} videos, {self.frames} passes of its "
                f"{self.frame_encoder(model)} frame encoder, about {when} here ({self.seconds_per_frame:.2f} s a "
                f"frame, measured); a -16-frame model (e.g. {model.name}-16-frame) reads 16 frames per window: "
                f"{self.frames_16} passes")

    @staticmethod
    def frame_encoder(model) -> str:
        c = model.config.frame_encoder
        return f"{c.layers}-layer {c.width}-wide {c.image_size}px"


def frame_cost(model, items: list[MediaItem], modality: str = "auto", window: float = WINDOW_SECONDS,
               hop: float | None = None) -> FrameCost | None:
    """What an every-frame model will spend on the videos among `items` (their packet index only, no
    decoding), with one frame-encoder pass timed on this device; None for a -16-frame model or no video.
    Files that cannot be read are left to the run, which reports them."""
    counts = frame_counts(model, items, modality, window, hop)
    return None if counts is None else FrameCost(*counts, seconds_per_frame(model))


def frame_counts(model, items: list[MediaItem], modality: str = "auto", window: float = WINDOW_SECONDS,
                 hop: float | None = None, file_window: bool = False) -> tuple[int, int, int] | None:
    """(videos, frame-encoder passes, passes a -16-frame model would make) for an every-frame model; None for a
    -16-frame model or when there is no video. `file_window`: each file is also read as 30 s windows (the
    index's file row) unless its one window covers it."""
    from sensorium.media.video import VideoReader

    if model.video_frames is not None:
        return None
    videos = frames = frames_16 = 0
    for item in items:
        try:
            if item.error or _kind(item, modality) == "audio":
                continue
            with VideoReader(item.path, on_truncated="warn") as video:
                times, spans = video.times, windows_for(video.duration, window, hop or window)
                if file_window and not (len(spans) == 1 and video.duration <= window <= WINDOW_SECONDS):
                    spans += windows_for(video.duration, WINDOW_SECONDS, WINDOW_SECONDS)
        except (SensoriumError, OSError):
            continue
        videos += 1
        for start, end in spans:
            inside = sum(start <= t < end for t in times) or 1
            frames += inside
            frames_16 += min(16, inside)
    return (videos, frames, frames_16) if frames else None


def seconds_per_frame(model) -> float:
    """One frame-encoder pass on the model's device, timed after a warm-up."""
    import time

    size = model.frame_size
    pixels = torch.zeros(1, 1, 3, size, size, device=model.device, dtype=model.dtype)
    with torch.inference_mode():
        model.video.frame_features(pixels, None)  # warm-up
        start = time.perf_counter()
        model.video.frame_features(pixels.expand(1, 2, -1, -1, -1), None)
        return (time.perf_counter() - start) / 2


def announce_frames(model, items: list[MediaItem], modality: str = "auto", window: float = WINDOW_SECONDS,
                    hop: float | None = None, file_window: bool = False) -> FrameCost | None:
    """Warn, before the work starts, when an every-frame model is about to read many frames."""
    import warnings

    counts = frame_counts(model, items, modality, window, hop, file_window)
    if counts is None or counts[1] <= ANNOUNCE_FRAMES:
        return None  # a small run is not worth the timing pass
    cost = FrameCost(*counts, seconds_per_frame(model))
    warnings.warn(cost.message(model), stacklevel=3)
    return cost


@dataclass
class _Pending:
    """One file of `iter_encode` while its windows are being encoded."""

    item: MediaItem
    kind: str = ""
    spans: list[tuple[float, float]] = field(default_factory=list)
    vectors: dict[int, torch.Tensor] = field(default_factory=dict)  # window number -> raw head output
    frames: int = 0
    read: bool = False  # every window was read (their vectors may still be on the way)
    error: str | None = None


def iter_encode(model, items: list[MediaItem], modality: str = "auto", window: float = WINDOW_SECONDS,
                hop: float | None = None, progress: Callable[[int], None] | None = None,
                on_truncated: str = "error", frames: int | None = None) -> Iterator[AVResult]:
    """One AVResult per item, in order; the frames of consecutive files' windows share frame-encoder batches of
    `frames` (FrameBatcher; by default the frame encoder's batch on the model's device), so a file's result may wait for the next file's frames."""
    from sensorium.errors import reason_for

    with torch.inference_mode():
        if modality != "audio":
            announce_frames(model, items, modality, window, hop)
        batcher, files, shown = FrameBatcher(model, frames), [], 0

        def take(done):
            for (number, index), vector in done:
                if files[number] is not None:  # (a file that failed mid-way has gone out already)
                    files[number].vectors[index] = vector

        for item in items:
            state = _Pending(item)
            files.append(state)
            try:
                with WindowReader(model, item, modality, window, hop, on_truncated) as reader:
                    state.kind, state.spans = reader.kind, reader.spans
                    for index, (_, _, audio, video) in enumerate(reader):
                        state.frames += 0 if video is None else video.pixel_values_videos.shape[1]
                        take(batcher.add((len(files) - 1, index), reader.kind, audio, video))
                state.read = True
            except (SensoriumError, OSError) as err:  # the input's fault; a bug or out of memory propagates
                state.error = reason_for(err, item.path)
            while shown < len(files) and (files[shown].error or len(files[shown].vectors) == len(files[shown].spans)
                                          and files[shown].read):
                yield _result(files[shown], progress)
                files[shown] = None  # its vectors are out
                shown += 1
        take(batcher.flush())
        for state in files[shown:]:
            yield _result(state, progress)


def _result(state: _Pending, progress) -> AVResult:
    if progress is not None:
        progress(1)
    item = state.item
    if state.error is not None:
        return AVResult(item, item.modality, error=state.error)
    found = torch.stack([state.vectors[i] for i in range(len(state.spans))]).float()
    if not bool(torch.isfinite(found).all()):
        return AVResult(item, item.modality, error="the model's output is not finite (NaN or inf) for this input")
    embedding = F.normalize(found.mean(dim=0), dim=-1).cpu().numpy()
    return AVResult(item, state.kind, embedding, state.spans, state.frames)


@torch.inference_mode()
def encode_texts(model, texts: list[str], head: str, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised text embeddings [len(texts), D] through one text head ("audio", "visual", "audio_visual")."""
    chunks = [F.normalize(model.encode_text(texts[i : i + batch_size], head=head).float(), dim=-1)
              for i in range(0, len(texts), batch_size)]
    return torch.cat(chunks)


@torch.inference_mode()
def label_vectors(model, labels: list[str], templates: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Per text head, [labels, D]: the re-normalised mean of each label's normalised template embeddings."""
    prompts = [template.format(label) for label in labels for template in templates]
    out = {}
    for head in ("audio", "visual", "audio_visual"):
        vectors = encode_texts(model, prompts, head).view(len(labels), len(templates), -1)
        out[head] = F.normalize(vectors.mean(dim=1), dim=-1)
    return out
