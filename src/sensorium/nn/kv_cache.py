"""A static key/value cache: one preallocated buffer pair per layer, written in place as a generation goes,
so a decode step allocates nothing (and can be graph-captured on a GPU)."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values [batch, kv_heads, length, head_dim] for each of `layers` layers. Slot t holds the t-th
    token fed (prompt padding included); rotary positions are applied before the keys are stored."""

    def __init__(self, layers: int, batch: int, kv_heads: int, length: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (batch, kv_heads, length, head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.length = length

    def update(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `keys`/`values` [B, kv_heads, T, head_dim] at slots start..start+T-1 of `layer`; the keys and
        values of slots 0..start+T-1, for attention."""
        end = start + keys.shape[2]
        if end > self.length:
            raise ValueError(f"the cache holds {self.length} positions; slot {end - 1} asked for")
        self.keys[layer][:, :, start:end] = keys
        self.values[layer][:, :, start:end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
