"""The decoder-only language model of Llama 3 and Qwen2 (AF3's Qwen2.5, PerceptionLM's Llama 3.x).

Pre-norm blocks: RMSNorm (weight applied after the cast back, as transformers), grouped-query attention with
rotate-half RoPE (q/k/v biases for Qwen2, none for Llama; Llama 3.1+ frequency scaling), SwiGLU; a final
RMSNorm and a vocabulary head, tied to the token embedding or not. `transformers_key_map` is the layout
transformers' `*ForCausalLM` saves.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from sensorium.keymaps import KeyMap
from sensorium.nn import gemv
from sensorium.nn.attention import few_query_attention
from sensorium.nn.kv_cache import KVCache
from sensorium.nn.norms import RMSNorm
from sensorium.nn.quant import QuantizedLinear
from sensorium.nn.layers import SwiGLU
from sensorium.nn.rope import Llama3Scaling, Rope1D, apply_rope_halves
from sensorium.nn.linear import Embedding, Linear, linear


STEP_TOKENS = 8  # steps of at most this many tokens after a prompt take few_query_attention on a CPU


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int = 151672
    width: int = 3584
    layers: int = 28
    heads: int = 28
    kv_heads: int = 4
    mlp_hidden: int = 18944
    rope_theta: float = 1000000.0
    eps: float = 1e-6
    max_positions: int = 32768
    qkv_bias: bool = True  # Qwen2: True; Llama: False
    tie_embeddings: bool = False  # Llama 3.2 1B/3B: the head is the token embedding
    rope_scaling: Llama3Scaling | None = None
    head_width: int | None = None  # when a config gives head_dim explicitly (else width / heads)

    @property
    def head_dim(self) -> int:
        return self.head_width or self.width // self.heads


def config_from_transformers(text: dict) -> DecoderConfig:
    """A DecoderConfig from a transformers Llama / Qwen2 text config (config.json or its text_config)."""
    if text.get("hidden_act", "silu") != "silu":
        raise ValueError(f"decoder with hidden_act={text['hidden_act']!r} is not a Llama/Qwen2 configuration")
    if text.get("use_sliding_window", False):
        raise ValueError("sliding-window attention is not supported (no released checkpoint uses it)")
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "llama3"):
        raise ValueError(f"rope_type {kind!r} is not supported (default and llama3 are)")
    scaling = None
    if kind == "llama3":
        scaling = Llama3Scaling(float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"]),
                                int(rope["original_max_position_embeddings"]))
    heads = text["num_attention_heads"]
    width = text["hidden_size"]
    head_dim = text.get("head_dim")
    return DecoderConfig(
        vocab_size=text["vocab_size"], width=width, layers=text["num_hidden_layers"], heads=heads,
        kv_heads=text.get("num_key_value_heads", heads), mlp_hidden=text["intermediate_size"],
        rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 10000.0))),
        eps=text.get("rms_norm_eps", 1e-6), max_positions=text.get("max_position_embeddings", 32768),
        qkv_bias=text.get("model_type", "qwen2") == "qwen2" or bool(text.get("attention_bias", False)),
        tie_embeddings=bool(text.get("tie_word_embeddings", False)), rope_scaling=scaling,
        head_width=head_dim if head_dim and head_dim != width // heads else None,
    )


class DecoderAttention(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = config.heads, config.kv_heads, config.head_dim
        self.q = Linear(config.width, config.heads * config.head_dim, bias=config.qkv_bias)
        self.k = Linear(config.width, config.kv_heads * config.head_dim, bias=config.qkv_bias)
        self.v = Linear(config.width, config.kv_heads * config.head_dim, bias=config.qkv_bias)
        self.o = Linear(config.heads * config.head_dim, config.width, bias=False)

    def forward(self, x, rope, mask, cache: KVCache | None = None, layer: int = 0, start: int = 0):
        """x [B, T, width]; rope (cos, sin) [B, T, head_dim]; mask [B, 1, T, S] bool or None (plain causal);
        with a cache, k and v go to slots start.. of `layer` and attention reads every slot up to them."""
        batch, tokens, _ = x.shape
        stepping = cache is not None and (isinstance(start, torch.Tensor) or start > 0) and tokens <= STEP_TOKENS
        if (stepping and not isinstance(start, torch.Tensor) and cache.keys[layer].dtype == torch.bfloat16
                and gemv.fit_all(x, (self.q, self.k, self.v))):
            return self._step_on_kernel(x, rope, mask, cache, layer, start)
        q = self.q(x).view(batch, tokens, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(batch, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(batch, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope[0][:, None], rope[1][:, None]
        q, k = apply_rope_halves(q, cos, sin), apply_rope_halves(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, start, k, v)
        if stepping and x.device.type == "cpu":
            out = few_query_attention(q, k, v, mask)  # a decode step: each query sees its own key at least
        else:
            causal = mask is None and tokens > 1  # a one-token step sees every cached key
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                                 enable_gqa=self.heads != self.kv_heads)
        return self.o(out.transpose(1, 2).reshape(batch, tokens, self.heads * self.head_dim))

    def _step_on_kernel(self, x, rope, mask, cache: KVCache, layer: int, start: int):
        """The step above in a few C calls (nn/gemv.py): q/k/v in one product, RoPE in place, attention over
        the cache as few_query_attention; the same rounding points, other summation orders. Decoder._step_on_kernel
        takes every step this could take, in one call, bit-equal: this per-layer form is its tested reference."""
        batch, tokens, _ = x.shape
        q, k, v = gemv.gemv_many(x, (self.q, self.k, self.v))
        q = q.view(batch, tokens, self.heads, self.head_dim)
        k = k.view(batch, tokens, self.kv_heads, self.head_dim)
        gemv.rope_halves_(q, k, rope[0], rope[1])
        v = v.view(batch, tokens, self.kv_heads, self.head_dim)
        cache.update(layer, start, k.transpose(1, 2), v.transpose(1, 2))
        out = gemv.step_attention(q, cache.keys[layer], cache.values[layer], start + tokens, mask)
        return self.o(out.view(batch, tokens, self.heads * self.head_dim))


class DecoderLayer(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.width, config.eps, weight_in_float32=False)
        self.attn = DecoderAttention(config)
        self.mlp_norm = RMSNorm(config.width, config.eps, weight_in_float32=False)
        self.mlp = SwiGLU(config.width, config.mlp_hidden)

    def forward(self, x, rope, mask, cache=None, layer: int = 0, start: int = 0):
        x = x + self.attn(self.attn_norm(x), rope, mask, cache, layer, start)
        return x + self.mlp(self.mlp_norm(x))


class Decoder(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.embed = Embedding(config.vocab_size, config.width)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.layers))
        self.norm = RMSNorm(config.width, config.eps, weight_in_float32=False)
        # A tied head reads the embedding's weight at call time (nothing to re-tie after loading).
        self.head = None if config.tie_embeddings else Linear(config.width, config.vocab_size, bias=False)
        self.rope = Rope1D(config.head_dim, config.rope_theta, "halves", scaling=config.rope_scaling)
        # (batch, length) -> free caches whose addresses a CUDA-graph decode step was recorded with (nn/compiled.py)
        self.static_caches: dict[tuple[int, int], list[KVCache]] = {}

    def forward(self, embeds, positions, mask, length: int, cache: KVCache | None = None, start: int = 0):
        """Hidden states [B, T, width] after the final norm. `positions` [B, T] are all below `length` (a
        bound the caller knows, so no host sync); with a cache, the tokens fill slots start..start+T-1."""
        rope = self.rope.at(positions, length, embeds.dtype)
        x = embeds
        stepped = self._step_on_kernel(x, rope, mask, cache, start)
        if stepped is not None:
            return self.norm(stepped)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, mask, cache, i, start)
        return self.norm(x)

    def _step_on_kernel(self, x, rope, mask, cache: KVCache | None, start) -> torch.Tensor | None:
        """A bf16 step on a CPU through every layer in one C call (nn/gemv.py's decoder_step: the per-layer
        calls of DecoderAttention._step_on_kernel and SwiGLU in sequence, same bits, without the Python between
        them; int8 and int4 layers too, with their modules' roundings), or a float32 one where the kernels have the
        float32 step where `gemv.float32_steps` (the layers' float32 ops, in other summation orders); None where it cannot take
        the step (a prompt, int4 in torch's layout, packed linears, a compiled or traced step), which then runs layer
        by layer."""
        tokens = x.shape[1]
        if (cache is None or isinstance(start, torch.Tensor) or start <= 0 or tokens > STEP_TOKENS
                or cache.keys[0].dtype not in (torch.bfloat16, torch.float32)):
            return None
        layers = []
        for i, layer in enumerate(self.layers):
            attn, mlp = layer.attn, layer.mlp
            linears = (attn.q, attn.k, attn.v, attn.o, mlp.gate, mlp.up, mlp.down)
            plain = all(isinstance(part, Linear) for part in linears)
            quantized = (all(isinstance(part, QuantizedLinear) and part.mode == "int8" for part in linears)
                         or all(isinstance(part, QuantizedLinear) and part.layout == "sensorium" for part in linears))
            if (not (plain or quantized) or any(part.bias is not None for part in (attn.o, mlp.gate, mlp.up, mlp.down))
                    or layer.attn_norm.weight_in_float32 or layer.mlp_norm.weight_in_float32):
                return None
            weights = [part.qweight if quantized else part.weight for part in linears]
            scales = [part.scales if quantized else None for part in linears]
            layers.append((layer.attn_norm.weight, *weights[:3], attn.q.bias, attn.k.bias, attn.v.bias, weights[3],
                           layer.mlp_norm.weight, *weights[4:], cache.keys[i], cache.values[i], *scales))
        if not gemv.decoder_step_fits(x, layers):
            return None
        if start + tokens > cache.length:
            raise ValueError(f"the cache holds {cache.length} positions; slot {start + tokens - 1} asked for")
        return gemv.decoder_step(x, layers, self.config.heads, self.config.eps, rope[0], rope[1], mask, start)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return linear(hidden, self.embed.weight) if self.head is None else self.head(hidden)

    def quantize(self, mode: str) -> None:
        """int8/int4 linears (nn/quant.py), the head included; a tied head gets a quantized copy of
        the embedding (the lookups keep the exact table)."""
        from sensorium.nn.quant import QuantizedLinear, quantize_linears

        done, kept = quantize_linears(self.layers, mode)
        if self.head is not None:
            self.head.unpack()
        weight = self.embed.plain_weight() if self.head is None else self.head.weight
        try:
            self.head = QuantizedLinear.from_weight(mode, weight.detach(), None, self.embed.weight.dtype)
            done += 1
        except ValueError:  # the head keeps its bf16 weight (a tied head: the embedding itself)
            kept += 1
        if kept:
            warnings.warn(f"{mode}: {kept} of {done + kept} decoder linears keep bfloat16 weights (int4 "
                          "needs inputs in multiples of 32)", RuntimeWarning, stacklevel=3)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: KVCache,
             slots: torch.Tensor) -> torch.Tensor:
        """One decode step in static shapes (what `compile=True` compiles): `tokens` [B, 1] at rotary `positions`
        [B, 1] go to cache slot `slots` [1]; `mask` [B, 1, 1, cache.length] says which slots each row sees. The
        next token's logits [B, vocab], float32."""
        hidden = self(self.embed(tokens), positions, mask, cache.length, cache, slots)
        return self.logits(hidden[:, -1]).float()

    @contextmanager
    def static_cache(self, batch: int, length: int) -> Iterator[KVCache]:
        """A zeroed cache from the pool for the block, back in the pool after it; a new one (its tensors marked as
        static addresses) when the pool has none: the same tensors serve generation after generation, so a
        recorded CUDA graph replays on them instead of recording again; concurrent generations take different
        ones."""
        weight = self.embed.weight
        pool = self.static_caches.setdefault((batch, length), [])
        cache = None
        while pool and cache is None:
            cache = pool.pop()
            if cache.keys[0].device != weight.device or cache.keys[0].dtype != weight.dtype:
                cache = None  # the model moved since: that cache is dropped
        if cache is None:
            cache = self.new_cache(batch, length, zeroed=True)
            for tensor in cache.keys + cache.values:
                torch._dynamo.mark_static_address(tensor)
        else:
            cache.zero_()
        try:
            yield cache
        finally:
            pool.append(cache)

    def new_cache(self, batch: int, length: int, zeroed: bool = False) -> KVCache:
        c, weight = self.config, self.embed.weight
        return KVCache(c.layers, batch, c.kv_heads, length, c.head_dim, weight.device, weight.dtype, zeroed)


def causal_mask(attention_mask: torch.Tensor, queries: int, past: int = 0) -> torch.Tensor | None:
    """[B, 1, queries, past + queries] bool: each query sees the real keys up to itself, or None when that is
    plain causal attention (no padding, and a prefill or a one-token step). A left-padding query
    sees no key; SDPA returns zeros for such rows (torch >= 2.5), exactly as in the reference, so a training loss
    that reads the last padding position's logits matches it too."""
    keys = attention_mask.bool()
    if (past == 0 or queries == 1) and bool(keys.all()):
        return None  # plain causal attention (SDPA's is_causal path skips the blocks above the diagonal)
    rows = torch.arange(past, past + queries, device=keys.device)[:, None]
    cols = torch.arange(keys.shape[1], device=keys.device)[None, :]
    return ((cols <= rows)[None] & keys[:, None, :])[:, None]


LAYER: KeyMap = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn.q.weight", "self_attn.q_proj.bias": "attn.q.bias",
    "self_attn.k_proj.weight": "attn.k.weight", "self_attn.k_proj.bias": "attn.k.bias",
    "self_attn.v_proj.weight": "attn.v.weight", "self_attn.v_proj.bias": "attn.v.bias",
    "self_attn.o_proj.weight": "attn.o.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    "mlp.gate_proj.weight": "mlp.gate.weight", "mlp.up_proj.weight": "mlp.up.weight",
    "mlp.down_proj.weight": "mlp.down.weight",
}


def transformers_key_map(config: DecoderConfig, model_prefix: str = "model.", head_key: str = "lm_head.weight",
                         ours: str = "") -> KeyMap:
    """transformers' names (`{model_prefix}layers.{i}...`, `{model_prefix}embed_tokens.weight`, the head at
    `head_key`: *ForCausalLM saves "model." and "lm_head.weight") -> this decoder's under `ours`. Biases only
    where the config has them; no head when it is tied."""
    layer = {k: v for k, v in LAYER.items() if config.qkv_bias or not k.endswith("_proj.bias")}
    key_map: KeyMap = {
        f"{model_prefix}embed_tokens.weight": f"{ours}embed.weight",
        f"{model_prefix}norm.weight": f"{ours}norm.weight",
    }
    if not config.tie_embeddings:
        key_map[head_key] = f"{ours}head.weight"
    return key_map | {f"{model_prefix}layers.{{i}}.{k}": f"{ours}layers.{{i}}.{v}" for k, v in layer.items()}
