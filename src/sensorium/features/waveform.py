"""Batching raw waveforms for models that read samples directly (PE-AV, PE-A-Frame)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def reflect_pad_batch(signals: list[np.ndarray | torch.Tensor], hop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The original PE-AV AudioProcessor: each mono signal reflect-padded on the right to a multiple of
    `hop`, then zero-padded to the longest. Returns (input_values [B, 1, N] float32, padding_mask [B, N]
    bool, True over each signal and its reflect padding)."""
    padded = []
    for signal in signals:
        x = torch.as_tensor(signal, dtype=torch.float32).reshape(1, -1)
        if x.shape[-1] == 0:
            raise ValueError("an empty signal cannot be padded")
        extra = -x.shape[-1] % hop
        if extra:
            # Reflect padding needs more samples than it adds. The original fails on clips shorter than
            # half a hop (20 ms at 48 kHz); those are zero-padded here instead.
            x = F.pad(x[None], (0, extra), mode="reflect" if extra < x.shape[-1] else "constant")[0]
        padded.append(x[0])
    lengths = torch.tensor([len(x) for x in padded])
    values = torch.zeros(len(padded), 1, int(lengths.max()))
    for row, x in enumerate(padded):
        values[row, 0, : len(x)] = x
    return values, torch.arange(values.shape[-1])[None, :] < lengths[:, None]
