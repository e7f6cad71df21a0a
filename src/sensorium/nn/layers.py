"""Small building blocks: MLP, LayerScale and the pre-norm transformer block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sensorium.nn import gemv
from sensorium.nn.attention import SelfAttention
from sensorium.nn.linear import Linear


class Mlp(nn.Module):
    """fc1 -> exact (erf) GELU -> fc2 (the GELU fused into fc1 where oneDNN runs it)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = Linear(width, hidden)
        self.fc2 = Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x, "gelu"))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases (Llama/Qwen2, the PE-AV encoders)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate = Linear(width, hidden, bias=False)
        self.up = Linear(width, hidden, bias=False)
        self.down = Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if gemv.fit_all(x, (self.gate, self.up)) and self.gate.weight.dim() == self.up.weight.dim():  # a decode step
            return self.down(gemv.swiglu_hidden(x, self.gate.weight, self.up.weight))
        return self.down(F.silu(self.gate(x)) * self.up(x))


class LayerScale(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TransformerBlock(nn.Module):
    """x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))); LayerNorm eps 1e-5."""

    def __init__(self, width: int, heads: int, mlp_hidden: int, layerscale: bool = False, eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = SelfAttention(width, heads)
        self.ls1 = LayerScale(width) if layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, mlp_hidden)
        self.ls2 = LayerScale(width) if layerscale else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope=rope, is_causal=is_causal))
        return x + self.ls2(self.mlp(self.norm2(x)))

    def forward_prefix(self, x: torch.Tensor, count: int) -> torch.Tensor:
        """The block's output for the first `count` tokens (see SelfAttention.forward_prefix)."""
        x = x[:, :count] + self.ls1(self.attn.forward_prefix(self.norm1(x), count))
        return x + self.ls2(self.mlp(self.norm2(x)))
