"""Frame stacks for video towers that take every frame as a squashed square (PE-AV)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def squash_frames(frames: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 RGB frames [F, H, W, 3] -> float32 [F, 3, size, size] in [-1, 1].

    The original PE-AV VideoProcessor: torchvision `Resize((size, size), BILINEAR)` on the uint8 tensor
    (squash, no crop; antialiased; computed in float32 and rounded back to uint8), then /255 and
    Normalize(0.5, 0.5)."""
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {x.dtype} {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255)
    return x.div_(255.0).sub_(0.5).div_(0.5)
