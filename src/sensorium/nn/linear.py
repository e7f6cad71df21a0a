"""Linear layers on oneDNN on a CPU.

torch's `F.linear` sends float32 on x86 to MKL's sgemm, which on AMD CPUs runs at ~40 % of what oneDNN reaches
on the same matrices (benchmarks/bound.py on a 2-core Zen: 184 against 420 GFLOP/s at 2048²; fp32 GEMV over
256 MB of weights 26.9 against 31.8 GB/s), and it leaves the GELU after it as a second pass over the output. oneDNN's linear (the op
torch.compile's CPU backend emits) takes the weights as they are, so a model keeps its state dict and its
checkpoints. float32 stays float32 (oneDNN's default math mode is strict): results differ from MKL's by the
order of the sums, ~1e-7 relative. bfloat16 goes to oneDNN in torch already; the fused GELU still saves a pass.

`SENSORIUM_ONEDNN=0` (read at import) or `use_onednn(False)` goes back to `F.linear`, e.g. to compare.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch import nn

AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_enabled = AVAILABLE and os.environ.get("SENSORIUM_ONEDNN", "1") != "0"
ACTIVATIONS = ("none", "gelu")  # gelu: exact (erf)


@contextlib.contextmanager
def use_onednn(enabled: bool):
    """Within the block, CPU linears run on oneDNN (True, the default where torch has it) or on F.linear."""
    global _enabled
    before, _enabled = _enabled, enabled and AVAILABLE
    try:
        yield
    finally:
        _enabled = before


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           activation: str = "none") -> torch.Tensor:
    """activation(x @ weight.T + bias); on a CPU, for inference in float32 or bfloat16, one oneDNN call."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if (_enabled and x.device.type == "cpu" and x.dtype == weight.dtype and x.dtype in (torch.float32, torch.bfloat16)
            and (bias is None or bias.dtype == x.dtype) and x.numel() > 0
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            # compiled bf16: inductor packs aten's linear into oneDNN itself, with its fusions (it sends fp32 to MKL)
            and not (x.dtype == torch.bfloat16 and torch.compiler.is_compiling())):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "none" if activation == "gelu" else "")
    out = F.linear(x, weight, bias)
    return F.gelu(out) if activation == "gelu" else out


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) whose forward is `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
