"""Normalisation layers that torch does not provide in the exact form the references use."""

from __future__ import annotations

import torch
from torch import nn

from sensorium.nn import gemv


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, computed in float32 and cast back to the input dtype.

    `weight_in_float32=True` multiplies by the weight before the cast back (Meta's lingua/perception_models
    RMSNorm); False casts first and then multiplies (the transformers Llama/Qwen2 form). The two agree in
    float32 and differ by a rounding in bf16/fp16.
    """

    def __init__(self, width: int, eps: float, weight_in_float32: bool = True):
        super().__init__()
        self.eps = eps
        self.weight_in_float32 = weight_in_float32
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.weight_in_float32 and gemv.rms_norm_fits(x, self.weight):  # a decode step's few rows
            return gemv.rms_norm(x, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt((x32 * x32).mean(-1, keepdim=True) + self.eps)
        if self.weight_in_float32:
            return (x32 * self.weight.float()).to(x.dtype)
        return self.weight * x32.to(x.dtype)
