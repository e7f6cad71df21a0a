"""The frozen batches processors make and models take: tensors only, built once, moved with `.to(device)`.

Each batch is a Mapping of its tensor fields (the names transformers' processors use where there is one), so
`model.encode(**batch)`-style calls and `dict(batch)` work as they do with transformers' BatchFeature;
fields that are not tensors (a clip's duration, frame times) are attributes, not keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import torch


class TensorBatch(Mapping):
    """A frozen dataclass whose tensor fields are its keys."""

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The keyword arguments of `model(**...)` / `model.generate(**...)`: the tensor fields given."""
        return self.tensors()

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors()[key]

    def __iter__(self):
        return iter(self.tensors())

    def __len__(self) -> int:
        return len(self.tensors())

    def to(self, device: torch.device | str) -> "TensorBatch":
        """The same batch with every tensor on `device` (dtypes kept: a model casts floats to its own)."""
        return replace(self, **{name: t.to(device) for name, t in self.tensors().items()})


@dataclass(frozen=True)
class TokenBatch(TensorBatch):
    input_ids: torch.Tensor  # [B, T] int64
    attention_mask: torch.Tensor  # [B, T] int64, 1 for real tokens


@dataclass(frozen=True)
class AudioBatch(TensorBatch):
    """Waveforms as PE-AV's original processor batches them: each clip reflect-padded to a multiple of the
    codec hop, zero-padded to the longest."""

    input_values: torch.Tensor  # [B, 1, N] float
    padding_mask: torch.Tensor  # [B, N] bool, True over each clip (and its reflect padding)
    seconds: tuple[float, ...] | None = None  # each clip's duration before padding, when known


def normalize_squashed(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 squashed frames -> [-1, 1] as the original PE-AV normalises them (/255, then (x - 0.5) / 0.5 in
    float32), cast to `dtype`."""
    return x.float().div_(255.0).sub_(0.5).div_(0.5).to(dtype)


@dataclass(frozen=True)
class VideoBatch(TensorBatch):
    # [B, F, 3, S, S] in [-1, 1]; or uint8, the squashed frames before normalising (features.video_frames:
    # exact, a quarter of the memory), normalised as they reach the frame encoder
    pixel_values_videos: torch.Tensor
    padding_mask_videos: torch.Tensor  # [B, F] bool
    timestamps: tuple[tuple[float, ...], ...] | None = None  # seconds of each frame, when known


@dataclass(frozen=True)
class AF3Inputs(TensorBatch):
    """Audio Flamingo 3's inputs; `model(**inputs)` and `model.generate(**inputs)` work as with transformers
    (`audio_tokens` and `single` are attributes, not keys)."""

    input_ids: torch.Tensor  # [B, T] int64, left-padded
    attention_mask: torch.Tensor  # [B, T] int64
    input_features: torch.Tensor | None = None  # [W, 128, 3000]: every sample's windows, in order
    input_features_mask: torch.Tensor | None = None  # [W, 3000] int32, valid mel frames
    labels: torch.Tensor | None = None  # [B, T]: input_ids with -100 at audio and padding positions
    audio_tokens: tuple[int, ...] = ()  # tokens of each audio, in order
    single: bool = False  # one conversation was given (not a list of them): chat answers with one reply


@dataclass(frozen=True)
class PLMInputs(TensorBatch):
    """PerceptionLM's inputs; `model(**inputs)` and `model.generate(**inputs)` work as with transformers."""

    input_ids: torch.Tensor  # [B, T] int64, left-padded
    attention_mask: torch.Tensor  # [B, T] int64
    pixel_values: torch.Tensor | None = None  # [images, tiles, 3, S, S] (ragged: [1, all tiles, ...]), thumbnails first
    pixel_values_videos: torch.Tensor | None = None  # [videos, frames, 3, S, S] (ragged: [1, all frames, ...])
    labels: torch.Tensor | None = None  # [B, T]: input_ids with -100 at media and padding positions
    image_tiles: tuple[int, ...] = ()  # tiles of each image, thumbnail included, in order
    video_frames: tuple[int, ...] = ()  # frames of each video, in order
    single: bool = False  # one conversation was given (not a list of them)
