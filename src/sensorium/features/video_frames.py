"""Frame stacks for video towers that take every frame as a squashed square (PE-AV)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sensorium.batches import normalize_squashed


def squash_frames(frames: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 RGB frames [F, H, W, 3] -> float32 [F, 3, size, size] in [-1, 1].

    The original PE-AV VideoProcessor: torchvision `Resize((size, size), BILINEAR)` on the uint8 tensor
    (squash, no crop; antialiased; computed in float32 and rounded back to uint8), then /255 and
    Normalize(0.5, 0.5)."""
    return normalize_squashed(squash_frames_uint8(frames, size))


def squash_frames_uint8(frames: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """The squashed frames before normalising: uint8 [F, 3, size, size]. The resize rounds back to uint8, so
    this holds exactly what `squash_frames` normalises, in a quarter of the memory (a window of an every-frame
    model keeps ~900 of these)."""
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {x.dtype} {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2)
    if x.shape[-2:] == (size, size):
        return x.contiguous()
    x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)
