"""A static key/value cache: one preallocated buffer pair per layer, written in place as a generation goes,
so a decode step allocates nothing (and can be graph-captured on a GPU)."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values [batch, kv_heads, length, head_dim] for each of `layers` layers. Slot t holds the t-th
    token fed (prompt padding included); rotary positions are applied before the keys are stored."""

    def __init__(self, layers: int, batch: int, kv_heads: int, length: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype, zeroed: bool = False):
        shape = (batch, kv_heads, length, head_dim)
        make = torch.zeros if zeroed else torch.empty  # zeroed: read whole (masked) by a compiled step
        self.keys = [make(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [make(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.length = length

    def zero_(self) -> "KVCache":
        for tensor in self.keys + self.values:
            tensor.zero_()
        return self

    def update(self, layer: int, start: int | torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `keys`/`values` [B, kv_heads, T, head_dim] at slots start..start+T-1 of `layer`; the keys and
        values of slots 0..start+T-1, for attention. A tensor `start` holds the T slots themselves (a compiled
        step: no Python number, so no recompiling per step) and every slot comes back, for a masked attention."""
        if isinstance(start, torch.Tensor):
            self.keys[layer].index_copy_(2, start, keys)
            self.values[layer].index_copy_(2, start, values)
            return self.keys[layer], self.values[layer]
        end = start + keys.shape[2]
        if end > self.length:
            raise ValueError(f"the cache holds {self.length} positions; slot {end - 1} asked for")
        self.keys[layer][:, :, start:end] = keys
        self.values[layer][:, :, start:end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
