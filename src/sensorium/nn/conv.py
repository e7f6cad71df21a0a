"""Convolutions whose bf16 runs at float32's speed on a CPU without native bf16.

On an x86 CPU without AVX512-BF16 (AMD Zen 2 / 3, most laptops' Intel cores) oneDNN refuses bf16 convolutions and
torch falls back to its generic im2col + bf16 product: 20-190x slower than this module's path on a 2-core Zen 3
(PE-Core's patch embedding 471 against 23 ms for 8 images, AF3's second audio convolution 19.6 s against 0.10 s;
benchmarks/conv_bf16.py). There a bf16 convolution runs in float32 instead: input, weight and bias
widened (exact), float32 sums, the bias added in float32 and one rounding to bf16, which is how oneDNN's native bf16
convolution rounds (its sums in float32), so the result differs from torch's slow path by the order of the sums
only. Autograd follows the casts. Elsewhere (float32, native bf16, CUDA) these are nn.Conv1d / nn.Conv2d as they
are; the parameters and state dict are theirs.
"""

from __future__ import annotations

import torch
from torch import nn

from sensorium.nn.linear import BF16_NATIVE


def widened(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a convolution of x by weight runs in float32: bf16 on a CPU without native bf16."""
    return (x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and x.device.type == "cpu"
            and not BF16_NATIVE)


class WidenedBf16:
    """What Conv1d and Conv2d add to nn.Conv1d / nn.Conv2d: the float32 path above."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if widened(x, weight):
            return super()._conv_forward(x.float(), weight.float(), None if bias is None else bias.float()).bfloat16()
        return super()._conv_forward(x, weight, bias)


class Conv1d(WidenedBf16, nn.Conv1d):
    pass


class Conv2d(WidenedBf16, nn.Conv2d):
    pass
