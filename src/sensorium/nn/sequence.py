"""Sequence bookkeeping shared by models, features and tasks: where windows go over a long input, and padding a
signal to whole frames. Pure functions, no I/O."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def window_starts(total: float, size: float, step: float) -> list[float]:
    """Starts of windows of `size` every `step` covering [0, total); when the last regular window stops short
    of the end, one more is aligned to the end, so every moment is seen by a full window. Works in any unit
    (frames, samples, seconds)."""
    if size <= 0 or step <= 0:
        raise ValueError("window and hop must be positive")
    if total <= size:
        return [0]
    regular = math.ceil((total - size) / step)
    return [k * step for k in range(regular)] + [total - size]


def reflect_pad_to_multiple(signal: torch.Tensor, multiple: int) -> torch.Tensor:
    """A 1-D signal reflect-padded on the right to a multiple of `multiple` samples (the original PE-AV
    AudioProcessor's rule). Reflect padding needs more samples than it adds: the original fails on clips
    shorter than half a frame (20 ms at 48 kHz); those are zero-padded here instead."""
    if signal.shape[-1] == 0:
        raise ValueError("an empty signal cannot be padded")
    extra = -signal.shape[-1] % multiple
    if not extra:
        return signal
    mode = "reflect" if extra < signal.shape[-1] else "constant"
    return F.pad(signal.reshape(1, 1, -1), (0, extra), mode=mode).reshape(-1)
