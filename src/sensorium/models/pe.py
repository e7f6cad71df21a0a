"""Perception Encoder: PE-Core CLIP (vision + text), PE-Lang and PE-Spatial vision towers.

Written from facebookresearch/perception_models `core/vision_encoder/pe.py` (commit 3e352cc) and checked
against its outputs. The vision tower is a pre-norm ViT with a bias-free patch conv, an optional class
token, an absolute position embedding (resampled bilinearly for other grids), ln_pre, 2-D RoPE in every
block, optional LayerScale, and for Core an ln_post, a one-query attention pool and a projection. The text
tower is a causal CLIP transformer pooled at the end-of-text token.

Three published layouts load into these modules through the literal key maps at the bottom:
the original `.pt` (facebook/<name>), timm (`timm/vit_pe_*`) and open_clip (`timm/PE-Core-*`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sensorium.nn import Mlp, RopeTables, TransformerBlock, rope_2d_angles, rope_tables
from sensorium.errors import CapabilityError
from sensorium.keymaps import Concat, KeyMap, Transposed, ZeroBiasDropped, prefixed
from sensorium.models.family import Family, processor_of
from sensorium.nn.conv import Conv2d
from sensorium.nn.linear import Linear, PackedForInference, linear


@dataclass(frozen=True)
class VisionConfig:
    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    mlp_hidden: int
    cls_token: bool = True
    layerscale: bool = False
    ln_post: bool = True
    attn_pool: bool = True  # Core: one-query attention pool (8 heads, MLP 4x width), then `proj`
    pool_heads: int = 8
    output_dim: int | None = None

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def prefix_tokens(self) -> int:
        return int(self.cls_token)


@dataclass(frozen=True)
class TextConfig:
    context_length: int
    width: int
    heads: int
    layers: int
    output_dim: int
    vocab_size: int = 49408

    @property
    def mlp_hidden(self) -> int:
        return 4 * self.width


@dataclass(frozen=True)
class PEConfig:
    name: str
    vision: VisionConfig
    text: TextConfig | None = None  # Core models only

    @property
    def is_clip(self) -> bool:
        return self.vision.attn_pool and self.vision.output_dim is not None


# ---------------------------------------------------------------------------------------------------------
# Modules


class AttentionPool(nn.Module):
    """One learned query attends over all tokens (class token included); no residual around the attention,
    then x + MLP(LN(x)). `qkv` keeps the original fused [q; k; v] rows."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.probe = nn.Parameter(torch.zeros(1, 1, width))
        self.qkv = Linear(width, 3 * width)
        self.proj = Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=1e-5)
        self.mlp = Mlp(width, 4 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        head_dim = width // self.heads
        weight, bias = self.qkv.weight, self.qkv.bias
        q = linear(self.probe.to(x.dtype).expand(batch, -1, -1), weight[:width], bias[:width])
        q = q.view(batch, 1, self.heads, head_dim).transpose(1, 2)
        k, v = linear(x, weight[width:], bias[width:]).view(batch, tokens, 2, self.heads, head_dim).permute(
            2, 0, 3, 1, 4
        )
        pooled = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, 1, width)
        pooled = self.proj(pooled)
        return (pooled + self.mlp(self.norm(pooled)))[:, 0]


class VisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        c = self.config = config
        self.patch_embed = Conv2d(3, c.width, kernel_size=c.patch_size, stride=c.patch_size, bias=False)
        self.cls_token = nn.Parameter(torch.zeros(c.width)) if c.cls_token else None
        self.pos_embed = nn.Parameter(torch.zeros(c.prefix_tokens + c.grid * c.grid, c.width))
        self.norm_pre = nn.LayerNorm(c.width, eps=1e-5)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.width, c.heads, c.mlp_hidden, layerscale=c.layerscale) for _ in range(c.layers)
        )
        self.norm = nn.LayerNorm(c.width, eps=1e-5) if c.ln_post else None
        self.attn_pool = AttentionPool(c.width, c.pool_heads) if c.attn_pool else None
        self.proj = nn.Parameter(torch.zeros(c.width, c.output_dim)) if c.output_dim else None
        self._rope = RopeTables(self._rope_for_grid)

    def _rope_for_grid(self, grid: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_tables(rope_2d_angles(self.config.head_dim, *grid, self.config.prefix_tokens, device=device))

    def _pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embedding for a grid; other grids resample bilinearly (no antialias), class row kept."""
        c = self.config
        if (grid_h, grid_w) == (c.grid, c.grid):
            return self.pos_embed
        prefix, grid = self.pos_embed[: c.prefix_tokens], self.pos_embed[c.prefix_tokens :]
        grid = grid.reshape(1, c.grid, c.grid, c.width).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
        return torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(grid_h * grid_w, c.width)])

    def forward_tokens(
        self, pixels: torch.Tensor, layer: int = -1, norm: bool = False, strip_cls_token: bool = False
    ) -> torch.Tensor:
        """Tokens [B, T, width] after block `layer` (the original's `forward_features`).

        `layer` counts like a Python index: 0 is the first block, -1 the last; the blocks after it are not
        run. `norm` applies ln_post (Core only). Sizes that are not a multiple of the patch are floored by
        the patch conv, as in the original.
        """
        c = self.config
        if not -c.layers <= layer < c.layers:
            raise IndexError(f"layer {layer} is out of range for a tower of {c.layers} blocks")
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be [B, 3, H, W], got {tuple(pixels.shape)}")
        grid_h, grid_w = pixels.shape[-2] // c.patch_size, pixels.shape[-1] // c.patch_size
        if grid_h == 0 or grid_w == 0:
            raise ValueError(f"pixels {tuple(pixels.shape[-2:])} are smaller than one {c.patch_size}px patch")
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        x = self.norm_pre(x + self._pos_embed(grid_h, grid_w).to(x.dtype))
        rope = self._rope.get((grid_h, grid_w), x.device)
        for block in self.blocks[: layer % c.layers + 1]:
            x = block(x, rope=rope)
        if norm and self.norm is not None:
            x = self.norm(x)
        if strip_cls_token and self.cls_token is not None:
            x = x[:, 1:]
        return x

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Core: pooled and projected embedding [B, output_dim]."""
        if self.attn_pool is None or self.proj is None:
            raise TypeError("this vision tower has no pooling head: it returns tokens (use forward_tokens)")
        x = self.forward_tokens(pixels, norm=True)
        return self.attn_pool(x) @ self.proj.to(x.dtype)


class TextTransformer(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        c = self.config = config
        self.token_embed = nn.Embedding(c.vocab_size, c.width)
        self.pos_embed = nn.Parameter(torch.zeros(c.context_length, c.width))
        self.blocks = nn.ModuleList(TransformerBlock(c.width, c.heads, c.mlp_hidden) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width, eps=1e-5)
        self.proj = nn.Parameter(torch.zeros(c.width, c.output_dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.shape[1] > self.config.context_length:
            raise ValueError(f"ids must be [B, <= {self.config.context_length}], got {tuple(ids.shape)}")
        x = self.token_embed(ids) + self.pos_embed[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, is_causal=True)
        eot = ids.argmax(dim=-1)  # end-of-text has the largest id; the first occurrence wins
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return self.norm(x) @ self.proj  # LayerNorm is per token, so pooling first gives the same numbers


# ---------------------------------------------------------------------------------------------------------
# Models users hold


class PEVisionModel(PackedForInference):
    """PE-Lang and PE-Spatial: a feature tower. `image_features` is its output."""

    compile_methods = ("image_features",)  # the methods `load(..., compile=True)` compiles

    def __init__(self, config: PEConfig):
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config.vision)
        self.processor = None  # attached by the loader (sensorium.processors.pe)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def device(self) -> torch.device:
        return self.visual.pos_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.pos_embed.dtype

    def preprocess(self, images, size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Images (paths, PIL images or HWC uint8 arrays) -> pixels [B, 3, S, S] with the original PE
        transform (the processor's `images`): squash resize (bilinear, antialiased as PIL does it), RGB,
        mean/std 0.5."""
        return processor_of(self).images(images, size)

    def _pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        if not isinstance(pixels, torch.Tensor):
            raise TypeError(f"pixels must be a tensor [B, 3, H, W] from m.preprocess(images); got "
                            f"{type(pixels).__module__}.{type(pixels).__name__} (pass images to m.preprocess first)")
        if pixels.ndim != 4 or pixels.shape[1] != 3 or not pixels.is_floating_point():
            raise ValueError(f"pixels must be a float tensor [B, 3, H, W] from m.preprocess(images); got "
                             f"{pixels.dtype} {tuple(pixels.shape)}")
        return pixels.to(device=self.device, dtype=self.dtype)

    def image_features(
        self, pixels: torch.Tensor, layer: int = -1, norm: bool = False, strip_cls_token: bool = False
    ) -> torch.Tensor:
        """Tokens [B, T, width] after block `layer` (0 = first block, -1 = last), class token first when
        the model has one. Same semantics and defaults as the original `forward_features`."""
        return self.visual.forward_tokens(self._pixels(pixels), layer, norm, strip_cls_token)


class PECoreModel(PEVisionModel):
    """PE-Core CLIP: image, video and text embeddings in one space."""

    compile_methods = ("encode_image", "encode_text", "image_features")

    def __init__(self, config: PEConfig, with_text: bool = True):
        super().__init__(config)
        if not config.is_clip:
            raise ValueError(f"{config.name} has no pooling head and projection; it is not a PE-Core model")
        self.text = TextTransformer(config.text) if with_text and config.text is not None else None
        self.logit_scale_log = nn.Parameter(torch.zeros(())) if self.text is not None else None

    @property
    def embed_dim(self) -> int:
        return self.config.vision.output_dim

    @property
    def context_length(self) -> int:
        return self._text_config().context_length

    def _text_config(self) -> TextConfig:
        if self.config.text is None:
            raise TypeError(f"{self.name} has no text tower")
        return self.config.text

    @property
    def has_text(self) -> bool:
        return self.text is not None

    text_missing = "timm checkpoints hold the vision tower only; load the original or open_clip weights"

    def _require_text(self) -> TextTransformer:
        if self.text is None:
            raise CapabilityError(f"{self.name} was loaded without its text tower ({self.text_missing}) for text embeddings")
        return self.text

    @property
    def logit_scale(self) -> torch.Tensor:
        """The learned temperature, exponentiated (multiply cosine similarities by it)."""
        self._require_text()
        return self.logit_scale_log.exp()

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        """CLIP BPE ids [B, context_length] (32, or 72 for G); long texts are cut with end-of-text kept last."""
        self._text_config()
        return processor_of(self).text(texts)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings [B, D], L2-normalised by default as the original's (PE-AV's are raw by default)."""
        x = self.visual(self._pixels(pixels))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_video(self, frames: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """frames [B, N, 3, S, S] -> [B, D]: the mean of the N frame embeddings, as the original.

        With `normalize=True` each frame embedding is L2-normalised before the mean and the mean is not
        re-normalised (the original's retrieval protocol); zero-shot classification normalises the mean
        of the raw frame embeddings instead: `F.normalize(encode_video(frames, normalize=False), dim=-1)`.
        """
        if frames.ndim != 5:
            raise ValueError(f"frames must be [B, N, 3, H, W], got {tuple(frames.shape)}")
        batch, num_frames = frames.shape[:2]
        x = self.encode_image(frames.flatten(0, 1), normalize=normalize)
        return x.view(batch, num_frames, -1).mean(dim=1)

    def encode_text(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32) or ids.ndim != 2:
            shown = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise TypeError(f"encode_text takes token ids [B, {self.context_length}] from m.tokenize(texts); "
                            f"got {shown}")
        x = self._require_text()(ids.to(self.device))
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """logits_per_image [B_images, B_texts] = logit_scale * cos(image, text)."""
        return self.logit_scale * self.encode_image(pixels) @ self.encode_text(ids).T


# ---------------------------------------------------------------------------------------------------------
# Checkpoint layouts. Keys: the file's names ("{i}" is a block index); values: ours.

ORIGINAL_VISION: KeyMap = {
    "conv1.weight": "patch_embed.weight",
    "class_embedding": "cls_token",
    "positional_embedding": "pos_embed",
    "ln_pre.weight": "norm_pre.weight",
    "ln_pre.bias": "norm_pre.bias",
    "transformer.resblocks.{i}.ln_1.weight": "blocks.{i}.norm1.weight",
    "transformer.resblocks.{i}.ln_1.bias": "blocks.{i}.norm1.bias",
    "transformer.resblocks.{i}.attn.in_proj_weight": "blocks.{i}.attn.qkv.weight",
    "transformer.resblocks.{i}.attn.in_proj_bias": "blocks.{i}.attn.qkv.bias",
    "transformer.resblocks.{i}.attn.out_proj.weight": "blocks.{i}.attn.proj.weight",
    "transformer.resblocks.{i}.attn.out_proj.bias": "blocks.{i}.attn.proj.bias",
    "transformer.resblocks.{i}.ls_1.gamma": "blocks.{i}.ls1.gamma",
    "transformer.resblocks.{i}.ln_2.weight": "blocks.{i}.norm2.weight",
    "transformer.resblocks.{i}.ln_2.bias": "blocks.{i}.norm2.bias",
    "transformer.resblocks.{i}.mlp.c_fc.weight": "blocks.{i}.mlp.fc1.weight",
    "transformer.resblocks.{i}.mlp.c_fc.bias": "blocks.{i}.mlp.fc1.bias",
    "transformer.resblocks.{i}.mlp.c_proj.weight": "blocks.{i}.mlp.fc2.weight",
    "transformer.resblocks.{i}.mlp.c_proj.bias": "blocks.{i}.mlp.fc2.bias",
    "transformer.resblocks.{i}.ls_2.gamma": "blocks.{i}.ls2.gamma",
    "ln_post.weight": "norm.weight",
    "ln_post.bias": "norm.bias",
    "attn_pool.probe": "attn_pool.probe",
    "attn_pool.attn.in_proj_weight": "attn_pool.qkv.weight",
    "attn_pool.attn.in_proj_bias": "attn_pool.qkv.bias",
    "attn_pool.attn.out_proj.weight": "attn_pool.proj.weight",
    "attn_pool.attn.out_proj.bias": "attn_pool.proj.bias",
    "attn_pool.layernorm.weight": "attn_pool.norm.weight",
    "attn_pool.layernorm.bias": "attn_pool.norm.bias",
    "attn_pool.mlp.c_fc.weight": "attn_pool.mlp.fc1.weight",
    "attn_pool.mlp.c_fc.bias": "attn_pool.mlp.fc1.bias",
    "attn_pool.mlp.c_proj.weight": "attn_pool.mlp.fc2.weight",
    "attn_pool.mlp.c_proj.bias": "attn_pool.mlp.fc2.bias",
    "proj": "proj",
}

# timm `Eva` (eva.py `_convert_pe`): cls_token (1,1,w) and pos_embed (1,N,w) carry leading singleton dims,
# the attention-pool in_proj is split into q and kv, and proj is stored as a Linear head with a zero bias.
TIMM_VISION: KeyMap = {
    "patch_embed.proj.weight": "patch_embed.weight",
    "cls_token": "cls_token",
    "pos_embed": "pos_embed",
    "norm_pre.weight": "norm_pre.weight",
    "norm_pre.bias": "norm_pre.bias",
    "blocks.{i}.norm1.weight": "blocks.{i}.norm1.weight",
    "blocks.{i}.norm1.bias": "blocks.{i}.norm1.bias",
    "blocks.{i}.attn.qkv.weight": "blocks.{i}.attn.qkv.weight",
    "blocks.{i}.attn.qkv.bias": "blocks.{i}.attn.qkv.bias",
    "blocks.{i}.attn.proj.weight": "blocks.{i}.attn.proj.weight",
    "blocks.{i}.attn.proj.bias": "blocks.{i}.attn.proj.bias",
    "blocks.{i}.gamma_1": "blocks.{i}.ls1.gamma",
    "blocks.{i}.norm2.weight": "blocks.{i}.norm2.weight",
    "blocks.{i}.norm2.bias": "blocks.{i}.norm2.bias",
    "blocks.{i}.mlp.fc1.weight": "blocks.{i}.mlp.fc1.weight",
    "blocks.{i}.mlp.fc1.bias": "blocks.{i}.mlp.fc1.bias",
    "blocks.{i}.mlp.fc2.weight": "blocks.{i}.mlp.fc2.weight",
    "blocks.{i}.mlp.fc2.bias": "blocks.{i}.mlp.fc2.bias",
    "blocks.{i}.gamma_2": "blocks.{i}.ls2.gamma",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
    "attn_pool.latent": "attn_pool.probe",
    "attn_pool.q.weight": Concat("attn_pool.qkv.weight", part=0),
    "attn_pool.kv.weight": Concat("attn_pool.qkv.weight", part=1),
    "attn_pool.q.bias": Concat("attn_pool.qkv.bias", part=0),
    "attn_pool.kv.bias": Concat("attn_pool.qkv.bias", part=1),
    "attn_pool.proj.weight": "attn_pool.proj.weight",
    "attn_pool.proj.bias": "attn_pool.proj.bias",
    "attn_pool.norm.weight": "attn_pool.norm.weight",
    "attn_pool.norm.bias": "attn_pool.norm.bias",
    "attn_pool.mlp.fc1.weight": "attn_pool.mlp.fc1.weight",
    "attn_pool.mlp.fc1.bias": "attn_pool.mlp.fc1.bias",
    "attn_pool.mlp.fc2.weight": "attn_pool.mlp.fc2.weight",
    "attn_pool.mlp.fc2.bias": "attn_pool.mlp.fc2.bias",
    "head.weight": Transposed("proj"),
    "head.bias": ZeroBiasDropped(),
}

ORIGINAL_TEXT: KeyMap = {
    "token_embedding.weight": "token_embed.weight",
    "positional_embedding": "pos_embed",
    "transformer.resblocks.{i}.ln_1.weight": "blocks.{i}.norm1.weight",
    "transformer.resblocks.{i}.ln_1.bias": "blocks.{i}.norm1.bias",
    "transformer.resblocks.{i}.attn.in_proj_weight": "blocks.{i}.attn.qkv.weight",
    "transformer.resblocks.{i}.attn.in_proj_bias": "blocks.{i}.attn.qkv.bias",
    "transformer.resblocks.{i}.attn.out_proj.weight": "blocks.{i}.attn.proj.weight",
    "transformer.resblocks.{i}.attn.out_proj.bias": "blocks.{i}.attn.proj.bias",
    "transformer.resblocks.{i}.ln_2.weight": "blocks.{i}.norm2.weight",
    "transformer.resblocks.{i}.ln_2.bias": "blocks.{i}.norm2.bias",
    "transformer.resblocks.{i}.mlp.c_fc.weight": "blocks.{i}.mlp.fc1.weight",
    "transformer.resblocks.{i}.mlp.c_fc.bias": "blocks.{i}.mlp.fc1.bias",
    "transformer.resblocks.{i}.mlp.c_proj.weight": "blocks.{i}.mlp.fc2.weight",
    "transformer.resblocks.{i}.mlp.c_proj.bias": "blocks.{i}.mlp.fc2.bias",
    "ln_final.weight": "norm.weight",
    "ln_final.bias": "norm.bias",
    "text_projection": "proj",
}

LAYOUTS: dict[str, KeyMap] = {
    # CLIP .pt: text at the top level, vision under "visual."
    "original": prefixed("visual.", "visual.", ORIGINAL_VISION)
    | prefixed("", "text.", ORIGINAL_TEXT)
    | {"logit_scale": "logit_scale_log"},
    # Lang / Spatial .pt: vision keys alone, with or without "visual." (both are published forms)
    "original_vision": prefixed("", "visual.", ORIGINAL_VISION),
    "original_vision_prefixed": prefixed("visual.", "visual.", ORIGINAL_VISION),
    "timm": prefixed("", "visual.", TIMM_VISION),
    "open_clip": prefixed("visual.trunk.", "visual.", TIMM_VISION)
    | prefixed("text.", "text.", ORIGINAL_TEXT)
    | {"logit_scale": "logit_scale_log"},
}


def detect_layout(keys: set[str]) -> str:
    """Name the layout of a PE state dict from its keys."""
    if any(k.startswith("visual.trunk.") for k in keys):
        return "open_clip"
    if "visual.conv1.weight" in keys:
        return "original" if "token_embedding.weight" in keys else "original_vision_prefixed"
    if "conv1.weight" in keys:
        return "original_vision"
    if "patch_embed.proj.weight" in keys:
        return "timm"
    shown = ", ".join(sorted(keys)[:8])
    raise ValueError(f"not a Perception Encoder checkpoint in a known layout (first keys: {shown})")


def has_text_tower(layout: str) -> bool:
    return layout in ("original", "open_clip")


def build(config: PEConfig, layout: str) -> PEVisionModel:
    """An uninitialised model (create it under torch.device('meta')) shaped for `config` and `layout`."""
    if config.is_clip:
        return PECoreModel(config, with_text=has_text_tower(layout))
    return PEVisionModel(config)


# ---------------------------------------------------------------------------------------------------------
# The released architectures (the checkpoints carry no config: the name says which), and the timm names
# their timm / open_clip copies give in config.json


def _text(context: int, width: int, heads: int, layers: int, out: int) -> TextConfig:
    return TextConfig(context_length=context, width=width, heads=heads, layers=layers, output_dim=out)


def _core(name, size, patch, width, layers, heads, mlp, out, text, cls=True) -> PEConfig:
    return PEConfig(name, VisionConfig(size, patch, width, layers, heads, mlp, cls_token=cls, output_dim=out), text)


def _tower(name, size, patch, width, layers, heads, mlp, cls, layerscale) -> PEConfig:
    return PEConfig(name, VisionConfig(size, patch, width, layers, heads, mlp, cls_token=cls, layerscale=layerscale,
                                       ln_post=False, attn_pool=False))


_TEXT_TS = _text(32, 512, 8, 12, 512)
_TEXT_BL = _text(32, 1024, 16, 24, 1024)
_TEXT_G = _text(72, 1280, 20, 24, 1280)

ARCHS: dict[str, PEConfig] = {c.name: c for c in (
    _core("PE-Core-T16-384", 384, 16, 192, 12, 3, 768, 512, _TEXT_TS),
    _core("PE-Core-S16-384", 384, 16, 384, 12, 6, 1536, 512, _TEXT_TS),
    _core("PE-Core-B16-224", 224, 16, 768, 12, 12, 3072, 1024, _TEXT_BL),
    _core("PE-Core-L14-336", 336, 14, 1024, 24, 16, 4096, 1024, _TEXT_BL),
    _core("PE-Core-G14-448", 448, 14, 1536, 50, 16, 8960, 1280, _TEXT_G, cls=False),
    _tower("PE-Lang-L14-448", 448, 14, 1024, 23, 16, 4096, True, True),
    _tower("PE-Lang-L14-448-Tiling", 448, 14, 1024, 23, 16, 4096, True, True),
    _tower("PE-Lang-G14-448", 448, 14, 1536, 47, 16, 8960, False, True),
    _tower("PE-Lang-G14-448-Tiling", 448, 14, 1536, 47, 16, 8960, False, True),
    _tower("PE-Spatial-T16-512", 512, 16, 192, 12, 3, 768, True, False),
    _tower("PE-Spatial-S16-512", 512, 16, 384, 12, 6, 1536, True, False),
    _tower("PE-Spatial-B16-512", 512, 16, 768, 12, 12, 3072, True, False),
    _tower("PE-Spatial-L14-448", 448, 14, 1024, 24, 16, 4096, True, False),
    _tower("PE-Spatial-G14-448", 448, 14, 1536, 50, 16, 8960, False, True),
)}

# timm's architecture name -> ours (the Tiling variants share their base's timm architecture; the first wins)
TIMM_ARCHITECTURES: dict[str, str] = {
    "vit_pe_core_tiny_patch16_384": "PE-Core-T16-384",
    "vit_pe_core_small_patch16_384": "PE-Core-S16-384",
    "vit_pe_core_base_patch16_224": "PE-Core-B16-224",
    "vit_pe_core_large_patch14_336": "PE-Core-L14-336",
    "vit_pe_core_gigantic_patch14_448": "PE-Core-G14-448",
    "vit_pe_lang_large_patch14_448": "PE-Lang-L14-448",
    "vit_pe_lang_gigantic_patch14_448": "PE-Lang-G14-448",
    "vit_pe_spatial_tiny_patch16_512": "PE-Spatial-T16-512",
    "vit_pe_spatial_small_patch16_512": "PE-Spatial-S16-512",
    "vit_pe_spatial_base_patch16_512": "PE-Spatial-B16-512",
    "vit_pe_spatial_large_patch14_448": "PE-Spatial-L14-448",
    "vit_pe_spatial_gigantic_patch14_448": "PE-Spatial-G14-448",
}


def vision_config_from_original(fields: dict) -> VisionConfig:
    """An original `PEConfig`'s fields (core/vision_encoder/config.py: image_size, patch_size, width, layers,
    heads, mlp_ratio, use_cls_token, ls_init_value, use_ln_post, pool_type, attn_pooler_heads, output_dim)
    as a VisionConfig: for an encoder registered in the original's PE_VISION_CONFIG that sensorium does not
    list (register it with `register_arch(PEConfig(name, vision_config_from_original(fields)))`)."""
    width = fields["width"]
    return VisionConfig(
        image_size=fields["image_size"],
        patch_size=fields["patch_size"],
        width=width,
        layers=fields["layers"],
        heads=fields["heads"],
        mlp_hidden=int(width * fields.get("mlp_ratio", 4.0)),
        cls_token=fields.get("use_cls_token", True),
        layerscale=fields.get("ls_init_value") is not None,
        ln_post=fields.get("use_ln_post", True),
        attn_pool=fields.get("pool_type", "attn") == "attn",
        pool_heads=fields.get("attn_pooler_heads", 8),
        output_dim=fields.get("output_dim"),
    )


def register_arch(config: PEConfig, timm_name: str | None = None) -> None:
    """Add an architecture (a fine-tuned shape, or a test model), by `config.name`, and the timm name its
    timm copies give; registering the same one again is a no-op."""
    for table, key, value in ((ARCHS, config.name, config), (TIMM_ARCHITECTURES, timm_name, config.name)):
        if key is None:
            continue
        if table.get(key, value) != value:
            raise ValueError(f"{key} is already registered as another architecture")
        table[key] = value


def config_from_files(files: dict[str, dict], name: str) -> PEConfig | None:
    """A timm (config.json "architecture") or open_clip (open_clip_config.json) copy's architecture."""
    timm = files.get("config.json", {}).get("architecture")
    open_clip = files.get("open_clip_config.json", {}).get("model_cfg", {}).get("vision_cfg", {}).get("timm_model_name")
    arch = TIMM_ARCHITECTURES.get(timm or open_clip or "")
    return ARCHS[arch] if arch else None


FAMILY = Family(
    name="pe",
    config_type=PEConfig,
    layouts=tuple(LAYOUTS),
    detect_layout=detect_layout,
    key_map=lambda layout, config: LAYOUTS[layout],
    build=build,
    config_files=("config.json", "open_clip_config.json"),
    config_from_files=config_from_files,
    archs=ARCHS,
    exportable=True,
)
