"""Where windows go over a long input."""

from __future__ import annotations

import math


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
