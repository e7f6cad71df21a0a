"""PE-AV in `embed` and `classify`: one vector per file from its sound, its pictures, or both.

Which head serves which input (`modality="auto"`):
* audio files -> `audio_embeds` (compare with text through the "audio" text head),
* videos with a sound track -> `audio_visual_embeds` (text head "audio_visual"),
* videos without sound -> `visual_embeds` (text head "visual").
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
    return hasattr(model, "encode_audio_video")


def windows_for(duration: float, window: float, hop: float) -> list[tuple[float, float]]:
    """(start, end) seconds: every `hop`, the last aligned to the end; one window for short media."""
    starts = window_starts(duration, window, hop)
    return [(float(s), min(float(s) + window, duration)) for s in starts]


def _load_audio(model, path):
    from sensorium.media.audio import load_audio

    signal = load_audio(path, model.sampling_rate, downmix="ffmpeg")
    if len(signal) == 0:
        raise MediaError(path, "no audio samples")
    return signal


def _has_no_audio(err: MediaError) -> bool:
    return "no audio" in err.reason


def encode_item(model, item: MediaItem, modality: str = "auto", window: float = WINDOW_SECONDS,
                hop: float | None = None) -> AVResult:
    """Decode one file and embed it with a PE-AV model (see the module docstring)."""
    from sensorium.features.video_frames import squash_frames
    from sensorium.media.video import Uniform, VideoReader

    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}")
    if item.error:
        raise MediaError(item.path, item.error)
    if item.modality == "image":
        raise MediaError(item.path, "an image; PE-AV embeds audio and video (use a PE-Core model for images)")
    hop = hop or window
    wants_video = modality in ("video", "audio_video") or (modality == "auto" and item.modality != "audio")
    wants_audio = modality in ("audio", "audio_video") or modality == "auto"
    reader = VideoReader(item.path) if wants_video else None
    try:
        signal = None
        if wants_audio:
            try:
                signal = _load_audio(model, item.path)
            except MediaError as err:
                if not (modality == "auto" and reader is not None and _has_no_audio(err)):
                    raise
        kind = "audio_video" if signal is not None and reader is not None else ("audio" if signal is not None else "video")
        duration = len(signal) / model.sampling_rate if signal is not None else reader.duration
        spans = windows_for(duration, window, hop)
        vectors, frames_used = [], 0
        for start, end in spans:
            audio = video = None
            if signal is not None:
                clip = signal[int(round(start * model.sampling_rate)) : int(round(end * model.sampling_rate))]
                audio = model.preprocess_audio([clip], sampling_rate=model.sampling_rate)
            if reader is not None:
                inside = [i for i, t in enumerate(reader.times) if start <= t < end] or \
                    [min(range(len(reader.times)), key=lambda i: abs(reader.times[i] - start))]
                if model.config.video_frames:
                    inside = [inside[k] for k in Uniform(model.config.video_frames).indices(inside)]
                # squashed as they are decoded: a window of full-size frames would not fit in memory
                squashed = {i: squash_frames(rgb[None], model.frame_size)[0] for i, _, rgb in reader.frames(inside)}
                pixels = torch.stack([squashed[i] for i in inside])
                video = {"pixel_values_videos": pixels[None], "padding_mask_videos": torch.ones(1, len(inside), dtype=torch.bool)}
                frames_used += len(inside)
            if kind == "audio_video":
                vectors.append(model.encode_audio_video(audio, video))
            elif kind == "audio":
                vectors.append(model.encode_audio(audio))
            else:
                vectors.append(model.encode_video(video))
        pooled = F.normalize(torch.cat(vectors).float().mean(dim=0), dim=-1)
        return AVResult(item, kind, pooled.cpu().numpy(), spans, frames_used)
    finally:
        if reader is not None:
            reader.close()


def iter_encode(model, items: list[MediaItem], modality: str = "auto", window: float = WINDOW_SECONDS,
                hop: float | None = None, progress: Callable[[int], None] | None = None) -> Iterator[AVResult]:
    with torch.inference_mode():
        for item in items:
            try:
                result = encode_item(model, item, modality, window, hop)
            except (SensoriumError, ValueError, OSError, RuntimeError) as err:
                result = AVResult(item, item.modality, error=getattr(err, "reason", None) or str(err))
            if progress is not None:
                progress(1)
            yield result


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
