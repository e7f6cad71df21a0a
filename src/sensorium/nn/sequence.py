"""Sequence bookkeeping shared by models, features and tasks: where windows go over a long input, padding a
signal to whole frames, and runs of frames above a threshold (the one run rule: PE-A-Frame's spans, the
localize and tag --timeline events). Pure functions, no I/O."""

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


def runs_above(above: torch.Tensor) -> list[tuple[int, int]]:
    """Half-open runs [start, end) of True in a 1-D boolean tensor, in order."""
    edges = torch.diff(F.pad(above.reshape(-1).cpu(), (1, 1), value=False).to(torch.int8)).nonzero()[:, 0]
    return [(start, end) for start, end in edges.view(-1, 2).tolist()]


def detect_runs(
    logits: torch.Tensor,
    threshold: float,
    median_filter: int | None = None,
    merge_gap: int | None = None,
    min_frames: int | None = None,
) -> list[tuple[int, int]]:
    """Half-open frame runs [start, end) where sigmoid(logit) > threshold (strict, as the original).

    Optional, in this order: a median filter over `median_filter` frames (odd) on the probabilities, merging
    runs separated by at most `merge_gap` frames, dropping runs shorter than `min_frames`."""
    probs = torch.sigmoid(logits.float().cpu())
    if median_filter is not None:
        if median_filter < 1 or median_filter % 2 == 0:
            raise ValueError("median_filter must be an odd number of frames")
        half = median_filter // 2
        padded = F.pad(probs[None, None], (half, half), mode="replicate")[0, 0]
        probs = padded.unfold(0, median_filter, 1).median(dim=-1).values
    runs = runs_above(probs > threshold)
    if merge_gap is not None:
        merged: list[tuple[int, int]] = []
        for start, end in runs:
            if merged and start - merged[-1][1] <= merge_gap:
                merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        runs = merged
    if min_frames is not None:
        runs = [(start, end) for start, end in runs if end - start >= min_frames]
    return runs


def runs_to_seconds(runs: list[tuple[int, int]], hop: int, sampling_rate: int) -> list[list[float]]:
    """Frame runs in seconds, computed as the original does (int64 index * hop / rate, a float32 division:
    frame 1 is 0.03999999910593033)."""
    if not runs:
        return []
    return (torch.tensor(runs, dtype=torch.int64) * hop / sampling_rate).tolist()
