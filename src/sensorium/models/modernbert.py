"""ModernBERT, the text tower of PE-AV and PE-A-Frame: alternating global and local (sliding-window)
attention with per-kind RoPE, GeGLU MLPs, no biases; pooled at the class token of the last built layer,
before any final norm (the original; transformers 5.23 pools after it unless told otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sensorium.keymaps import KeyMap, Unused
from sensorium.nn import Rope1D, apply_rope_halves
from sensorium.nn.linear import Linear


@dataclass(frozen=True)
class ModernBertConfig:
    """The text tower; `layers` is how many are run: the pooled one is the last."""

    vocab_size: int = 50368
    width: int = 1024
    mlp_hidden: int = 2624
    heads: int = 16
    layers: int = 22
    global_layers: tuple[int, ...] = ()  # the others attend within +-local_window//2 tokens
    local_window: int = 128
    global_theta: float = 160000.0
    local_theta: float = 10000.0
    eps: float = 1e-5
    pad_id: int = 50283
    cls_id: int = 50281
    sep_id: int = 50282
    max_tokens: int = 512  # the original tokenizes with truncation at 512
    file_layers: int = 22  # layers stored in the checkpoint (the original layout keeps all 28)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


# ---------------------------------------------------------------------------------------------------------
# Text tower: ModernBERT


class ModernBertLayer(nn.Module):
    def __init__(self, config: ModernBertConfig, first: bool):
        super().__init__()
        self.heads, self.head_dim = config.heads, config.head_dim
        self.attn_norm = nn.Identity() if first else nn.LayerNorm(config.width, eps=config.eps, bias=False)
        self.qkv = Linear(config.width, 3 * config.width, bias=False)
        self.attn_out = Linear(config.width, config.width, bias=False)
        self.mlp_norm = nn.LayerNorm(config.width, eps=config.eps, bias=False)
        self.mlp_in = Linear(config.width, 2 * config.mlp_hidden, bias=False)
        self.mlp_out = Linear(config.mlp_hidden, config.width, bias=False)

    def forward(self, x, rope, mask):
        batch, tokens, width = x.shape
        qkv = self.qkv(self.attn_norm(x)).view(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope_halves(qkv[:2], *rope).unbind(0)
        attn = F.scaled_dot_product_attention(q, k, qkv[2], attn_mask=mask)
        x = x + self.attn_out(attn.transpose(1, 2).reshape(batch, tokens, width))
        value, gate = self.mlp_in(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.mlp_out(F.gelu(value) * gate)


class ModernBert(nn.Module):
    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.config = config
        self.token_embed = nn.Embedding(config.vocab_size, config.width)
        self.embed_norm = nn.LayerNorm(config.width, eps=config.eps, bias=False)
        self.layers = nn.ModuleList(ModernBertLayer(config, first=i == 0) for i in range(config.layers))
        self.ropes = {theta: Rope1D(config.head_dim, theta, "halves") for theta in {config.global_theta, config.local_theta}}

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class-token vector [B, width] after the last built layer, before any final norm."""
        c = self.config
        tokens = ids.shape[1]
        x = self.embed_norm(self.token_embed(ids))
        ropes = {theta: rope.tables(tokens, x.device) for theta, rope in self.ropes.items()}
        keys = torch.ones(ids.shape, dtype=torch.bool, device=ids.device) if attention_mask is None else attention_mask.bool()
        positions = torch.arange(tokens, device=ids.device)
        near = (positions[:, None] - positions[None, :]).abs() <= c.local_window // 2
        global_mask = keys[:, None, None, :]
        # A padding position far from every real token would have no key at all (a NaN row that would
        # leak through the values into the next layer); letting it see itself keeps it finite.
        local_mask = (global_mask & near) | torch.eye(tokens, dtype=torch.bool, device=ids.device)
        for i, layer in enumerate(self.layers):
            is_global = i in c.global_layers
            x = layer(x, ropes[c.global_theta if is_global else c.local_theta], global_mask if is_global else local_mask)
        return x[:, 0]


def modernbert_config_from_dict(data: dict, used_layers: int) -> ModernBertConfig:
    total = data.get("num_hidden_layers", 22)
    if not 1 <= used_layers <= total:
        raise ValueError(f"text layer {used_layers} is outside the {total}-layer text model")
    if "layer_types" in data:
        global_layers = tuple(i for i, kind in enumerate(data["layer_types"]) if kind == "full_attention")
    else:
        every = data.get("global_attn_every_n_layers", 3)
        global_layers = tuple(i for i in range(total) if i % every == 0)
    rope = data.get("rope_parameters") or {}
    return ModernBertConfig(
        vocab_size=data.get("vocab_size", 50368),
        width=data.get("hidden_size", 768),
        mlp_hidden=data.get("intermediate_size", 1152),
        heads=data.get("num_attention_heads", 12),
        layers=used_layers,
        global_layers=tuple(i for i in global_layers if i < used_layers),
        local_window=data.get("local_attention", 128),
        global_theta=float((rope.get("full_attention") or {}).get("rope_theta", data.get("global_rope_theta", 160000.0))),
        local_theta=float((rope.get("sliding_attention") or {}).get("rope_theta", data.get("local_rope_theta", 10000.0))),
        eps=data.get("norm_eps", 1e-5),
        pad_id=data.get("pad_token_id", 50283),
        cls_id=data.get("cls_token_id", 50281),
        sep_id=data.get("sep_token_id", 50282),
        file_layers=total,
    )


def check_text_model(data: dict) -> None:
    for key, want in (("hidden_activation", "gelu"), ("attention_bias", False), ("mlp_bias", False), ("norm_bias", False)):
        if data.get(key, want) != want:
            raise ValueError(f"text model with {key}={data[key]!r} is not a released PE-AV configuration")

TEXT: KeyMap = {
    "embeddings.tok_embeddings.weight": "token_embed.weight",
    "embeddings.norm.weight": "embed_norm.weight",
    "layers.{i}.attn_norm.weight": "layers.{i}.attn_norm.weight",
    "layers.{i}.attn.Wqkv.weight": "layers.{i}.qkv.weight",
    "layers.{i}.attn.Wo.weight": "layers.{i}.attn_out.weight",
    "layers.{i}.mlp_norm.weight": "layers.{i}.mlp_norm.weight",
    "layers.{i}.mlp.Wi.weight": "layers.{i}.mlp_in.weight",
    "layers.{i}.mlp.Wo.weight": "layers.{i}.mlp_out.weight",
    "final_norm.weight": Unused(),  # the pooled layer is read before the final norm
}
