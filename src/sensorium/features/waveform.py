"""Batching raw waveforms for models that read samples directly (PE-AV, PE-A-Frame)."""

from __future__ import annotations

import numpy as np
import torch

from sensorium.nn.sequence import reflect_pad_to_multiple


def reflect_pad_batch(signals: list[np.ndarray | torch.Tensor], hop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The original PE-AV AudioProcessor: each mono signal reflect-padded on the right to a multiple of
    `hop`, then zero-padded to the longest. Returns (input_values [B, 1, N] float32, padding_mask [B, N]
    bool, True over each signal and its reflect padding)."""
    padded = [reflect_pad_to_multiple(torch.as_tensor(s, dtype=torch.float32).reshape(-1), hop) for s in signals]
    lengths = torch.tensor([len(x) for x in padded])
    values = torch.zeros(len(padded), 1, int(lengths.max()))
    for row, x in enumerate(padded):
        values[row, 0, : len(x)] = x
    return values, torch.arange(values.shape[-1])[None, :] < lengths[:, None]
