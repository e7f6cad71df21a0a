"""Rotary position embeddings.

`rope_2d_angles` builds the axial 2-D angles of the Perception Encoder vision towers, `rope_1d_angles`
the usual 1-D ones. Two rotation conventions exist in the released models: `apply_rope_pairs` rotates
adjacent channel pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin) (GPT-J / interleaved: PE towers,
the PE-AV encoders), `apply_rope_halves` rotates channel i with channel i + D/2 (GPT-NeoX / rotate_half:
ModernBERT, Llama, Qwen2).

Tables are precomputed on the model's device and kept by one bounded cache (`RopeTables`), the same policy
for every family: `Rope1D` serves any positions by indexing a table for 0..capacity-1 (gpt-fast's way, so a
decode step makes no tensor and needs no host sync), the 2-D towers key theirs by patch grid.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable

import torch

Tables = tuple[torch.Tensor, torch.Tensor]


def rope_2d_angles(
    head_dim: int, grid_h: int, grid_w: int, prefix_tokens: int = 0, theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Angles [prefix + gh*gw, head_dim], float32, for row-major patch tokens.

    The first half of each head rotates with the column index, the second half with the row index;
    each axis has head_dim/4 frequencies theta^(-4i/head_dim), every angle repeated for its pair.
    Positions are raw integer patch indices, offset by `prefix_tokens` so that the prefix (class) tokens
    take angle 0 (no rotation), which is what the released PE weights expect.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = 1.0 / theta ** (torch.arange(0, 2 * quarter, 2, dtype=torch.float32, device=device) / (head_dim // 2))
    rows = torch.arange(grid_h, dtype=torch.float32, device=device) + prefix_tokens
    cols = torch.arange(grid_w, dtype=torch.float32, device=device) + prefix_tokens
    col_angles = (cols[:, None] * freqs).repeat_interleave(2, dim=-1)  # [gw, head_dim/2]
    row_angles = (rows[:, None] * freqs).repeat_interleave(2, dim=-1)  # [gh, head_dim/2]
    angles = torch.cat(
        [col_angles[None, :, :].expand(grid_h, -1, -1), row_angles[:, None, :].expand(-1, grid_w, -1)], dim=-1
    ).reshape(grid_h * grid_w, head_dim)
    return torch.cat([angles.new_zeros(prefix_tokens, head_dim), angles])


def rope_tables(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, signed sin) for `apply_rope_pairs`: the sin of each pair's first channel is negated, so the
    rotation needs no negation pass at run time."""
    signed_sin = angles.sin()
    signed_sin[..., 0::2] *= -1
    return angles.cos(), signed_sin


def apply_rope_pairs(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of the last dim of `x` [..., T, D] by the angles of `rope_tables` [T, D]:
    (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), i.e. x * cos + rotate_pairs(x) * sin with the same
    roundings as the original. Lower precisions are computed in float32 and cast back, as the original
    does (its angles are float32, so the product promotes).

    The rotation is one complex multiply of the pairs read as complex numbers: bit-identical to the form above
    (each output is one product minus / plus another, rounded once each), without building the swapped copy
    (9x faster in float32, 2x in bfloat16, on a CPU)."""
    if x.device.type != "mps" and not torch.compiler.is_compiling():
        # (MPS lacks complex multiply in some torch versions; under torch.compile the explicit form below fuses
        # into one loop, complex tensors would not)
        x32 = x if x.dtype == torch.float32 else x.float()
        pairs = x32.unflatten(-1, (-1, 2))
        if pairs.stride(-1) != 1 or pairs.storage_offset() % 2 or any(s % 2 for s in pairs.stride()[:-1]):
            pairs = pairs.contiguous()
        turn = torch.complex(cos[..., 0::2], -signed_sin[..., 0::2])  # cos + i sin, one per pair
        return torch.view_as_real(torch.view_as_complex(pairs) * turn).flatten(-2).to(x.dtype)
    if x.dtype == torch.float32:
        x32 = x
    else:  # one contiguous float32 copy that the rest works on in place
        x32 = x.to(torch.float32, memory_format=torch.contiguous_format)
    pairs = x32.unflatten(-1, (-1, 2))
    swapped = torch.stack((pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (x1, x0) for every pair
    swapped.mul_(signed_sin)
    rotated = torch.mul(x32, cos) if x32 is x else x32.mul_(cos)
    return rotated.add_(swapped).to(x.dtype)


@dataclass(frozen=True)
class Llama3Scaling:
    """Llama 3.1+'s frequency scaling (rope_type "llama3"): long wavelengths slowed by `factor`, short ones
    kept, the band between interpolated."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_positions: int


def rope_frequencies(head_dim: int, theta: float, scaling: Llama3Scaling | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """[head_dim / 2] float32 frequencies theta^(-2i/head_dim), scaled as Llama 3 does when asked."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    if scaling is None:
        return freqs
    low_wavelength = scaling.original_max_positions / scaling.low_freq_factor
    high_wavelength = scaling.original_max_positions / scaling.high_freq_factor
    wavelength = 2 * math.pi / freqs
    scaled = torch.where(wavelength > low_wavelength, freqs / scaling.factor, freqs)
    smooth = (scaling.original_max_positions / wavelength - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelength < high_wavelength) & ~(wavelength > low_wavelength)
    return torch.where(medium, smoothed, scaled)


def rope_1d_angles(head_dim: int, positions: int | torch.Tensor, theta: float,
                   device: torch.device | str | None = None, scaling: Llama3Scaling | None = None) -> torch.Tensor:
    """Angles [T, head_dim / 2], float32: position p times frequency theta^(-2i/head_dim), as every
    reference computes them (frequencies in float32, one float32 product per angle). Made on `device`
    (that of `positions` when they are a tensor)."""
    if isinstance(positions, int):
        positions = torch.arange(positions, device=device)
    return positions.float()[:, None] * rope_frequencies(head_dim, theta, scaling, positions.device)


class RopeTables:
    """Rotation tables built once per (key, device, dtype) by `build(key, device) -> (cos, sin)` (float32,
    made on `device`) and kept, at most `keep` of them: the least recently used is dropped, so a model that
    sees many sizes holds a bounded amount."""

    def __init__(self, build: Callable[[Hashable, torch.device], Tables], keep: int = 8):
        self.build, self.keep = build, keep
        self._tables: OrderedDict[tuple, Tables] = OrderedDict()

    def get(self, key: Hashable, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tables:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        full = (key, device, dtype)
        tables = self._tables.get(full)
        if tables is None:
            cos, sin = self.build(key, device)
            tables = self._tables[full] = (cos.to(dtype), sin.to(dtype))
            while len(self._tables) > self.keep:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(full)
        return tables


class Rope1D:
    """1-D RoPE for any positions: cos and sin [..., head_dim] looked up in a table for positions
    0..capacity-1, where capacity is the next power of two (at least 256) that covers the length asked for,
    capped at `limit`. `convention` is "halves" (`apply_rope_halves`: each angle for channel i and i + D/2)
    or "pairs" (`apply_rope_pairs`: each angle twice in a row, sin signed as `rope_tables` does)."""

    def __init__(self, head_dim: int, theta: float, convention: str, limit: int | None = None, keep: int = 4,
                 scaling: Llama3Scaling | None = None):
        if convention not in ("halves", "pairs"):
            raise ValueError(f"convention must be 'halves' or 'pairs', got {convention!r}")
        self.head_dim, self.theta, self.convention, self.limit = head_dim, theta, convention, limit
        self.scaling = scaling
        self._tables = RopeTables(self._build, keep)

    def _build(self, capacity: int, device: torch.device) -> Tables:
        angles = rope_1d_angles(self.head_dim, capacity, self.theta, device=device, scaling=self.scaling)
        if self.convention == "pairs":
            return rope_tables(angles.repeat_interleave(2, dim=-1))
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    def capacity(self, length: int) -> int:
        if self.limit is not None and length > self.limit:
            raise ValueError(f"{length} positions asked for; this model has {self.limit}")
        capacity = max(256, 1 << max(length - 1, 0).bit_length())
        return capacity if self.limit is None else min(capacity, self.limit)

    def tables(self, length: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tables:
        """(cos, sin) [length, head_dim] for positions 0..length-1."""
        cos, sin = self._tables.get(self.capacity(length), device, dtype)
        return cos[:length], sin[:length]

    def at(self, positions: torch.Tensor, length: int, dtype: torch.dtype = torch.float32) -> Tables:
        """(cos, sin) [*positions.shape, head_dim] for `positions`, all below `length` (the caller knows
        the bound, so no host sync is needed)."""
        cos, sin = self._tables.get(self.capacity(length), positions.device, dtype)
        return cos[positions], sin[positions]


def apply_rope_halves(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin in float32, cast back; cos/sin are [T, D] (each angle twice: the
    first and the second half of the head use the same frequencies)."""
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)
