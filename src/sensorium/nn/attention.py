"""Multi-head attention on `scaled_dot_product_attention` (bf16 on a CPU: sensorium's attention kernel, nn/gemv.py),
and a decode step's attention in float32 matmuls."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sensorium.nn import gemv
from sensorium.nn.rope import apply_rope_pairs
from sensorium.nn.linear import Linear, linear


@torch.library.custom_op("sensorium::attention_bf16", mutates_args=())
def kernel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, cos: torch.Tensor | None,
                     signed_sin: torch.Tensor | None, causal: bool, valid: torch.Tensor | None,
                     scale: float | None) -> torch.Tensor:
    """gemv.attention as an operator torch.compile can call (a ctypes call is invisible to its tracing)."""
    return gemv.attention(q, k, v, heads, cos, signed_sin, causal, valid, scale)


@kernel_attention.register_fake
def _(q, k, v, heads, cos, signed_sin, causal, valid, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def attention_on_kernel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
    rope: tuple[torch.Tensor, torch.Tensor] | None = None, causal: bool = False, valid: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor | None:
    """Attention of bf16 tokens on a CPU through sensorium's kernel (2.1-2.7x SDPA's flash kernel there, RoPE on
    adjacent pairs applied as it packs q and k), or None where the kernel cannot take them (then use SDPA).

    q, k, v [B, T, H * D] (views are read in place); rope: (cos, signed sin) [T, D] of `rope_tables`; valid [B, T]
    bool, the keys every query may see; scale: of q·k (1/√D unless given). Returns [B, T, H * D]."""
    if not gemv.attention_fits(q, k, v, heads):
        return None
    if rope is not None and rope[0].shape != (q.shape[1], q.shape[2] // heads):
        return None
    if valid is not None and valid.shape != q.shape[:2]:
        return None
    return kernel_attention(q, k, v, heads, *(rope or (None, None)), causal, valid, scale)


class SelfAttention(nn.Module):
    """Self-attention with one fused qkv projection: rows [q; k; v], each split into contiguous heads.

    `rope` is an optional (cos, signed sin) pair from `rope_tables`, [T, head_dim], applied to q and k.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = Linear(width, 3 * width)
        self.proj = Linear(width, width)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x)
        q, k, v = qkv.view(batch, tokens, 3, width).unbind(2)  # [B, T, width] views, read in place by the kernel
        out = attention_on_kernel(q, k, v, self.heads, rope, is_causal)
        if out is not None:
            return self.proj(out)
        qkv = qkv.view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope_pairs(qkv[:2], *rope).unbind(0)  # one op for q and k together
        else:
            q, k = qkv[0], qkv[1]
        x = F.scaled_dot_product_attention(q, k, qkv[2], is_causal=is_causal)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, width))

    def forward_prefix(self, x: torch.Tensor, count: int) -> torch.Tensor:
        """Outputs for the first `count` tokens only, each still attending over all tokens (skips the
        query, output and later work of the others; used where only class tokens are read out)."""
        batch, tokens, width = x.shape
        head_dim = width // self.heads
        weight, bias = self.qkv.weight, self.qkv.bias
        if self.qkv.packed:  # an opaque oneDNN weight has no rows to slice: q for every token, the others unused
            q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
            q = q[:, :, :count].transpose(1, 2)
        else:
            q = linear(x[:, :count], weight[:width], bias[:width]).view(batch, count, self.heads, head_dim)
            k, v = linear(x, weight[width:], bias[width:]).view(batch, tokens, 2, self.heads, head_dim).permute(
                2, 0, 3, 1, 4
            )
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, count, width))


def few_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q kᵀ / √d, masked) v for a few queries over many keys (a decoder's step after its prompt), in
    float32 matmuls with the query heads grouped by their key/value head (GQA without repeating keys).

    q [B, H, T, D], k and v [B, Hkv, S, D], mask [B, 1, T, S] bool or None; every query must see one key at least
    (a decode step sees its own). On a CPU, SDPA's flash kernel spends most of a bf16 step on its blocking for one
    query (0.60 ms for 14 heads over 800 keys, 3.0 ms over 4000; this: 0.08 and 0.26 ms), and rounds no better."""
    batch, heads, tokens, dim = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    group = heads // kv_heads
    queries = q.float().reshape(batch, kv_heads, group * tokens, dim)
    scores = torch.matmul(queries, k.float().transpose(-1, -2)).mul_(dim**-0.5)
    if mask is not None:
        scores.view(batch, kv_heads, group, tokens, keys).masked_fill_(~mask[:, :, None], float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), v.float())
    return out.view(batch, heads, tokens, dim).to(q.dtype)
