"""PE-AV (one embedding space for audio, video and text) and PE-A-Frame (when a described sound happens).

Written from facebookresearch/perception_models `core/audio_visual_encoder` (commit 3e352cc) and checked
against its outputs; transformers 5.23 (`pe_audio`, `pe_video`, `pe_audio_video`) is a second reference
where it agrees with the original.

Audio: 48 kHz mono, reflect-padded to a multiple of the 1920-sample hop -> a frozen DAC-VAE encoder (Snake
convolutions, strides 2/8/10/12) whose VAE mean gives 128-d latents at 25 Hz -> Linear -> a sequence
encoder. Video: frames squashed to the frame encoder's size -> PE-Core (stored inside the checkpoint) ->
L2-normalised -> two Linears -> a sequence encoder. Fusion: video tokens -> 1x1 conv -> nearest resampling
to each item's audio length -> LayerNorm -> concatenated with the audio tokens -> two Linears -> a sequence
encoder. Text: ModernBERT, the class token of layer `nth_text_layer` *before* the final norm. Each of the
eight heads is LayerNorm(eps 1e-6) + Linear; embeddings are not L2-normalised.

A sequence encoder is: a class token, a "patcher" (two masked GroupNorm/SiLU/conv-3 blocks with a residual,
run over the class token too), pre-norm layers (RMSNorm, per-head RMS q/k norm, 1-D RoPE on interleaved pairs
with theta = max(10000, 2 * max_positions), SwiGLU, no biases), a final RMSNorm and a Linear.

Where sensorium departs from the references, on purpose:
* Batch invariance. The original runs the DAC on the zero-padded batch, which changes the last ~0.24 s
  of shorter clips (the codec sees the padding). Here the DAC runs on each clip's own samples, so an item's
  outputs equal the original's single-item outputs whatever else is in the batch.
* transformers 5.23 pools text after ModernBERT's final norm (unless `tie_last_hidden_states=False`) and
  skips the video-to-audio alignment when the padded lengths match; the original does neither, nor do we.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sensorium.models import pe
from sensorium.models.pe import TIMM_VISION, ORIGINAL_VISION, VisionConfig, VisionTransformer
from sensorium.features.windows import window_starts
from sensorium.nn import RMSNorm, Rope1D, SwiGLU, apply_rope_halves, apply_rope_pairs
from sensorium.errors import MissingFileError
from sensorium.keymaps import FirstHalf, KeyMap, Unused, prefixed
from sensorium.models.family import Family

SAMPLING_RATE = 48000
CODEC_CHUNK = 750  # frames (30 s) per codec call on long clips
CODEC_MARGIN = 25  # frames (1 s) of context on each side of a chunk; the codec sees ~0.45 s
# Frames (6 s) per codec call when a file is streamed (PE-A-Frame). The codec's working memory is ~2.4 MB per
# frame at pe-a-frame-base width (64 channels at 48 kHz, several activations alive): ~0.5 GB for 6 s + margins,
# against ~1.9 GB for CODEC_CHUNK; the margins cost a third more codec work, which the smaller working set
# mostly wins back.
STREAM_CODEC_CHUNK = 150
FRAME_CHUNK = 32  # video frames per frame-encoder call


# ---------------------------------------------------------------------------------------------------------
# Configs


@dataclass(frozen=True)
class DacConfig:
    channels: int = 64  # width after the first conv; doubles at every strided block
    strides: tuple[int, ...] = (2, 8, 10, 12)
    latent_dim: int = 128  # the VAE mean: the first half of the bottleneck's outputs
    sampling_rate: int = SAMPLING_RATE

    @property
    def hop(self) -> int:
        return math.prod(self.strides)

    @property
    def width(self) -> int:
        return self.channels * 2 ** len(self.strides)

    @property
    def frame_rate(self) -> float:
        return self.sampling_rate / self.hop


@dataclass(frozen=True)
class EncoderConfig:
    """One of the audio, video and fusion sequence encoders."""

    width: int
    layers: int
    heads: int
    mlp_hidden: int
    max_positions: int = 10000
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def rope_theta(self) -> float:
        # The original ignores any configured theta and derives it from the position limit (20000).
        return float(max(10000, 2 * self.max_positions))


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


@dataclass(frozen=True)
class PEAVConfig:
    name: str
    kind: str  # "pe-av" | "pe-a-frame"
    dac: DacConfig
    audio: EncoderConfig
    text: ModernBertConfig
    output_dim: int
    video: EncoderConfig | None = None
    fusion: EncoderConfig | None = None
    frame_encoder: VisionConfig | None = None
    video_frames: int | None = None  # 16 for the -16-frame models; None: every native frame

    @property
    def is_frame_level(self) -> bool:
        return self.kind == "pe-a-frame"


# ---------------------------------------------------------------------------------------------------------
# DAC-VAE encoder


class Snake(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The reference's x + 1/(alpha + 1e-9) * sin(alpha x)^2, same operations in the same order. Without
        # autograd the passes run in place on one buffer: bit-identical, ~3x faster on these huge tensors
        # (the codec's Snakes were ~40 % of PE-AV's audio time).
        inverse = (self.alpha + 1e-9).reciprocal()
        if torch.is_grad_enabled() and (x.requires_grad or self.alpha.requires_grad):
            return x + inverse * torch.sin(self.alpha * x).pow(2)
        return (self.alpha * x).sin_().square_().mul_(inverse).add_(x)


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.snake1 = Snake(channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.snake2(self.conv1(self.snake1(x))))
        return x + y if torch.is_grad_enabled() else y.add_(x)


class DownBlock(nn.Module):
    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.units = nn.ModuleList(ResidualUnit(channels, d) for d in (1, 3, 9))
        self.snake = Snake(channels)
        self.down = nn.Conv1d(channels, 2 * channels, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return self.down(self.snake(x))


class DacEncoder(nn.Module):
    """Waveforms [B, 1, N] (N a multiple of the hop) -> VAE means [B, N / hop, latent_dim]."""

    def __init__(self, config: DacConfig):
        super().__init__()
        self.config = config
        self.conv_in = nn.Conv1d(1, config.channels, kernel_size=7, padding=3)
        self.blocks = nn.ModuleList(DownBlock(config.channels * 2**i, s) for i, s in enumerate(config.strides))
        self.snake_out = Snake(config.width)
        self.conv_out = nn.Conv1d(config.width, config.width, kernel_size=3, padding=1)
        self.bottleneck = nn.Conv1d(config.width, config.latent_dim, kernel_size=1)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(waveforms)
        for block in self.blocks:
            x = block(x)
        return self.bottleneck(self.conv_out(self.snake_out(x))).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------
# Sequence encoder (audio, video and fusion towers)


class MaskedGroupNorm(nn.Module):
    """GroupNorm with one group whose statistics cover only the valid time steps; padded steps come out 0."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, C, L]; mask [B, L] bool (True = valid) or None."""
        if mask is None:
            return F.group_norm(x, 1, self.weight, self.bias, self.eps)
        valid = mask[:, None, :].to(x.dtype)
        count = valid.sum(dim=(1, 2), keepdim=True) * x.shape[1]
        mean = (x * valid).sum(dim=(1, 2), keepdim=True) / count
        var = ((x - mean).square() * valid).sum(dim=(1, 2), keepdim=True) / count
        x = (x - mean) / torch.sqrt(var + self.eps)
        return (x * self.weight[:, None] + self.bias[:, None]) * valid


class ConvBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = MaskedGroupNorm(width)
        self.conv = nn.Conv1d(width, width, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.conv(F.silu(self.norm(x, mask)))


class Attention(nn.Module):
    """Bias-free q/k/v/o, RMS norm of each head's q and k (one weight shared by the heads), then RoPE."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.heads, self.head_dim = config.heads, config.head_dim
        self.q = nn.Linear(config.width, config.width, bias=False)
        self.k = nn.Linear(config.width, config.width, bias=False)
        self.v = nn.Linear(config.width, config.width, bias=False)
        self.o = nn.Linear(config.width, config.width, bias=False)
        self.q_norm = RMSNorm(config.head_dim, config.eps)
        self.k_norm = RMSNorm(config.head_dim, config.eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None):
        batch, tokens, width = x.shape
        shape = (batch, tokens, self.heads, self.head_dim)
        q = self.q_norm(self.q(x).view(shape)).transpose(1, 2)
        k = self.k_norm(self.k(x).view(shape)).transpose(1, 2)
        v = self.v(x).view(shape).transpose(1, 2)
        q, k = apply_rope_pairs(torch.stack((q, k)), *rope).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(out.transpose(1, 2).reshape(batch, tokens, width))


class EncoderLayer(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.width, config.eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.width, config.eps)
        self.mlp = SwiGLU(config.width, config.mlp_hidden)

    def forward(self, x, rope, mask):
        x = x + self.attn(self.attn_norm(x), rope, mask)
        return x + self.mlp(self.mlp_norm(x))


class SequenceEncoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.cls_token = nn.Parameter(torch.zeros(config.width))
        self.patch1 = ConvBlock(config.width)
        self.patch2 = ConvBlock(config.width)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.layers))
        self.norm = RMSNorm(config.width, config.eps)
        self.output = nn.Linear(config.width, config.width, bias=False)
        self.rope = Rope1D(config.head_dim, config.rope_theta, "pairs", limit=config.max_positions)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, width], mask [B, T] (True = valid) -> [B, 1 + T, width], the class token first."""
        batch, steps, _ = x.shape
        if steps + 1 > self.config.max_positions:
            raise ValueError(
                f"{steps} steps exceed the encoder's {self.config.max_positions - 1}-step position limit; "
                "longer inputs must be cut into windows"
            )
        x = torch.cat([self.cls_token.to(x.dtype).expand(batch, 1, -1), x], dim=1)
        if mask is not None:
            mask = F.pad(mask.bool(), (1, 0), value=True)
            if bool(mask.all()):
                mask = None  # the masked and plain paths agree to ~1e-7; the plain one is faster
        channels = x.transpose(1, 2)
        channels = channels + self.patch2(self.patch1(channels, mask), mask)
        x = channels.transpose(1, 2)
        rope = self.rope.tables(steps + 1, x.device)
        attn_mask = mask[:, None, None, :] if mask is not None else None
        for layer in self.layers:
            x = layer(x, rope, attn_mask)
        return self.output(self.norm(x))


# ---------------------------------------------------------------------------------------------------------
# Text tower: ModernBERT


class ModernBertLayer(nn.Module):
    def __init__(self, config: ModernBertConfig, first: bool):
        super().__init__()
        self.heads, self.head_dim = config.heads, config.head_dim
        self.attn_norm = nn.Identity() if first else nn.LayerNorm(config.width, eps=config.eps, bias=False)
        self.qkv = nn.Linear(config.width, 3 * config.width, bias=False)
        self.attn_out = nn.Linear(config.width, config.width, bias=False)
        self.mlp_norm = nn.LayerNorm(config.width, eps=config.eps, bias=False)
        self.mlp_in = nn.Linear(config.width, 2 * config.mlp_hidden, bias=False)
        self.mlp_out = nn.Linear(config.mlp_hidden, config.width, bias=False)

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


# ---------------------------------------------------------------------------------------------------------
# Towers and heads


class ContrastiveHead(nn.Module):
    def __init__(self, width: int, output_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.proj = nn.Linear(width, output_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


class AudioTower(nn.Module):
    def __init__(self, config: PEAVConfig):
        super().__init__()
        self.dac = DacEncoder(config.dac)
        self.data_proj = nn.Linear(config.dac.latent_dim, config.audio.width)
        self.encoder = SequenceEncoder(config.audio)

    def latents(self, waveforms: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """DAC-VAE means [B, T, latent] and their mask [B, T] for padded waveforms [B, N] whose item i has
        lengths[i] samples (a multiple of the hop). Each item is encoded from its own samples only, so the
        zero padding of the batch never reaches the codec (the original lets it change the last frames)."""
        hop = self.dac.config.hop
        frames = [n // hop for n in lengths]
        out = waveforms.new_zeros(len(lengths), max(frames), self.dac.config.latent_dim)
        with torch.no_grad():
            # One clip per call: convolution kernels round differently with the batch size, and a clip's
            # latents should not depend on its batch even in the last bit (long clips keep the cores busy).
            for i, n in enumerate(lengths):
                out[i, : n // hop] = self.dac_chunked(waveforms[i, :n])
        steps = torch.arange(out.shape[1], device=waveforms.device)
        mask = steps[None, :] < torch.tensor(frames, device=waveforms.device)[:, None]
        return out, mask

    def dac_chunked(self, waveform: torch.Tensor) -> torch.Tensor:
        """Latents [T, latent] of one clip [N] (N a multiple of the hop). Clips longer than CODEC_CHUNK frames
        go through the codec in chunks that overlap by CODEC_MARGIN frames on each side, far beyond its
        receptive field (~0.45 s), so memory stays bounded (one 64-channel activation of a 5-minute clip
        alone is 3.7 GB) and the result equals one pass up to float rounding."""
        hop = self.dac.config.hop
        frames = waveform.shape[-1] // hop
        if frames <= CODEC_CHUNK + 2 * CODEC_MARGIN:
            return self.dac(waveform[None, None])[0]
        out = waveform.new_empty(frames, self.dac.config.latent_dim)
        for first in range(0, frames, CODEC_CHUNK):
            last = min(first + CODEC_CHUNK, frames)
            lo, hi = max(0, first - CODEC_MARGIN), min(frames, last + CODEC_MARGIN)
            latents = self.dac(waveform[None, None, lo * hop : hi * hop])[0]
            out[first:last] = latents[first - lo : last - lo]
        return out

    def forward(self, latents: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.encoder(self.data_proj(latents), mask)


class VideoTower(nn.Module):
    def __init__(self, config: PEAVConfig):
        super().__init__()
        self.frames = VisionTransformer(config.frame_encoder)
        self.proj = nn.Linear(config.frame_encoder.output_dim, config.video.width, bias=False)
        self.data_proj = nn.Linear(config.video.width, config.video.width)
        self.encoder = SequenceEncoder(config.video)

    def frame_features(self, pixels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """L2-normalised frame-encoder outputs [B, F, D] of pixels [B, F, 3, S, S]. Padding frames are not run
        (their rows stay zero), and frames go through the encoder FRAME_CHUNK at a time: an all-frame model
        reads every frame of a 30 s clip (750-900 of them), whose activations would not fit at once."""
        batch, count = pixels.shape[:2]
        flat = pixels.flatten(0, 1)
        valid = torch.ones(batch * count, dtype=torch.bool, device=pixels.device) if mask is None else mask.flatten().bool()
        chosen = flat[valid]
        encoded = torch.cat([self.frames(chosen[i : i + FRAME_CHUNK]) for i in range(0, len(chosen), FRAME_CHUNK)])
        out = flat.new_zeros(batch * count, self.frames.config.output_dim)
        out[valid] = F.normalize(encoded, dim=-1)
        return out.view(batch, count, -1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.encoder(self.data_proj(self.proj(features)), mask)


class Fusion(nn.Module):
    def __init__(self, config: PEAVConfig):
        super().__init__()
        width = config.fusion.width
        if not config.audio.width == config.video.width == width:
            raise ValueError("PE-AV fusion needs equal audio, video and fusion widths")
        self.video_proj = nn.Conv1d(width, width, kernel_size=1)
        self.video_norm = nn.LayerNorm(width, eps=1e-5)
        self.concat_proj = nn.Linear(2 * width, width)
        self.data_proj = nn.Linear(width, width)
        self.encoder = SequenceEncoder(config.fusion)

    def forward(self, audio, audio_mask, video, video_mask) -> torch.Tensor:
        """audio [B, Ta, w] and video [B, Tv, w] tokens (class tokens excluded) with their masks."""
        batch, audio_steps = audio.shape[:2]
        video = self.video_proj(video.transpose(1, 2))  # [B, w, Tv]
        audio_sizes = audio_mask.sum(-1).tolist() if audio_mask is not None else [audio_steps] * batch
        video_sizes = video_mask.sum(-1).tolist() if video_mask is not None else [video.shape[-1]] * batch
        if audio_sizes == video_sizes and video.shape[-1] == audio_steps:
            aligned = video
        else:
            # Nearest-neighbour resampling of each item's own frames to its own audio length (per item, as
            # the original; transformers compares padded lengths only). Rows past the audio length stay 0.
            aligned = video.new_zeros(batch, video.shape[1], audio_steps)
            for i, (a, v) in enumerate(zip(audio_sizes, video_sizes)):
                aligned[i, :, :a] = F.interpolate(video[i : i + 1, :, :v], size=a, mode="nearest")[0]
        aligned = self.video_norm(aligned.transpose(1, 2))
        x = self.data_proj(self.concat_proj(torch.cat([audio, aligned], dim=-1)))
        return self.encoder(x, audio_mask)


# ---------------------------------------------------------------------------------------------------------
# Models users hold


@dataclass(frozen=True)
class AudioBatch:
    """Waveforms as the original processor batches them: each clip reflect-padded to a multiple of the hop,
    zero-padded to the longest."""

    input_values: torch.Tensor  # [B, 1, N] float
    padding_mask: torch.Tensor  # [B, N] bool, True over each clip (and its reflect padding)
    seconds: tuple[float, ...] | None = None  # each clip's duration before padding, when known


@dataclass(frozen=True)
class VideoBatch:
    pixel_values_videos: torch.Tensor  # [B, F, 3, S, S] in [-1, 1]
    padding_mask_videos: torch.Tensor  # [B, F] bool
    timestamps: tuple[tuple[float, ...], ...] | None = None  # seconds of each frame, when known


@dataclass
class PEAVOutput:
    """The original's output fields; those the inputs do not determine are None. Not L2-normalised."""

    audio_embeds: torch.Tensor | None = None
    visual_embeds: torch.Tensor | None = None
    audio_visual_embeds: torch.Tensor | None = None
    audio_text_embeds: torch.Tensor | None = None
    visual_text_embeds: torch.Tensor | None = None
    audio_visual_text_embeds: torch.Tensor | None = None
    audio_plus_text_embeds: torch.Tensor | None = None
    visual_plus_text_embeds: torch.Tensor | None = None

    @property
    def video_embeds(self) -> torch.Tensor | None:
        """`visual_embeds` under the name the PE-AV README uses."""
        return self.visual_embeds

    def fields(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


class _PEAudioModel(nn.Module):
    """What PE-AV and PE-A-Frame share: the text tower, the audio tower and their preprocessing."""

    def __init__(self, config: PEAVConfig):
        super().__init__()
        self.config = config
        self.text = ModernBert(config.text)
        self.audio = AudioTower(config)
        self._tokenizer = None
        self.tokenizer_file: str | None = None  # set by the loader from the checkpoint's folder

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def has_text(self) -> bool:
        return self.tokenizer_file is not None

    text_missing = "no tokenizer.json was found beside the weights"

    @property
    def device(self) -> torch.device:
        return self.audio.data_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.audio.data_proj.weight.dtype

    @property
    def sampling_rate(self) -> int:
        return self.config.dac.sampling_rate

    @property
    def frame_seconds(self) -> float:
        """Duration of one audio token (40 ms)."""
        return self.config.dac.hop / self.config.dac.sampling_rate

    @property
    def max_audio_seconds(self) -> float:
        """The longest clip one pass can take (the encoders' position limit, ~400 s)."""
        return (self.config.audio.max_positions - 1) * self.frame_seconds

    # --- preprocessing -----------------------------------------------------------------------------------

    def tokenize(self, texts: str | list[str]):
        """ModernBERT ids and mask ([CLS] ... [SEP], truncated at 512, padded to the longest)."""
        if self._tokenizer is None:
            if self.tokenizer_file is None:
                raise MissingFileError(f"{self.name}: {self.text_missing}")
            from sensorium.text.tokenizer_json import JsonTokenizer

            self._tokenizer = JsonTokenizer(self.tokenizer_file, self.config.text.max_tokens, self.config.text.pad_id)
        return self._tokenizer(texts)

    def preprocess_audio(self, audio, sampling_rate: int | None = None) -> AudioBatch:
        """Paths, arrays or tensors (one or a list) -> AudioBatch at 48 kHz mono.

        Files are decoded with FFmpeg's downmix ((L+R)/sqrt 2 for stereo, as torchcodec does for the
        original) and resampler; arrays/tensors ([samples] or [channels, samples]) need `sampling_rate`."""
        from sensorium.features.waveform import reflect_pad_batch
        from sensorium.media.audio import load_audio

        items = audio if isinstance(audio, (list, tuple)) else [audio]
        if not items:
            raise ValueError("no audio given")
        signals = []
        for item in items:
            if isinstance(item, (str, Path)):
                signals.append(load_audio(item, self.sampling_rate, downmix="ffmpeg"))
            else:
                if sampling_rate is None:
                    raise ValueError("audio arrays need sampling_rate= (PE-AV reads 48 kHz)")
                signals.append(load_audio(item, self.sampling_rate, source_rate=sampling_rate, downmix="ffmpeg"))
        values, mask = reflect_pad_batch(signals, self.config.dac.hop)
        return AudioBatch(values, mask, tuple(len(s) / self.sampling_rate for s in signals))

    def _audio_batch(self, audio, sampling_rate: int | None = None) -> AudioBatch:
        if isinstance(audio, AudioBatch):
            return audio
        if isinstance(audio, dict) and "input_values" in audio:
            return AudioBatch(audio["input_values"], audio["padding_mask"])
        return self.preprocess_audio(audio, sampling_rate)

    def _text_batch(self, text):
        from sensorium.text.tokenizer_json import TokenBatch

        if isinstance(text, TokenBatch):
            return text
        if isinstance(text, dict) and "input_ids" in text:
            return TokenBatch(text["input_ids"], text.get("attention_mask", torch.ones_like(text["input_ids"])))
        return self.tokenize(text)

    # --- towers ------------------------------------------------------------------------------------------

    def text_features(self, text) -> torch.Tensor:
        """The pooled text vector [B, width] (class token of layer nth_text_layer, before the final norm)."""
        batch = self._text_batch(text)
        return self.text(batch.input_ids.to(self.device), batch.attention_mask.to(self.device))

    def audio_tokens(self, audio, sampling_rate: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio encoder output [B, 1 + T, width] (class token first) and the frame mask [B, T]."""
        batch = self._audio_batch(audio, sampling_rate)
        values = batch.input_values.to(self.device, self.dtype)
        values = values[:, 0] if values.ndim == 3 else values
        lengths = batch.padding_mask.sum(-1).tolist()
        if any(n % self.config.dac.hop for n in lengths):
            raise ValueError(f"clip lengths must be multiples of {self.config.dac.hop} samples (preprocess_audio pads them)")
        latents, mask = self.audio.latents(values, lengths)
        return self.audio(latents, mask), mask.to(self.device)


class PEAVModel(_PEAudioModel):
    """PE-AV: audio, video, audio+video and text embeddings in one space (plus audio+text, video+text)."""

    HEADS = ("audio", "visual", "audio_visual", "audio_text", "visual_text", "audio_visual_text",
             "audio_plus_text", "visual_plus_text")

    def __init__(self, config: PEAVConfig):
        super().__init__(config)
        self.video = VideoTower(config)
        self.fusion = Fusion(config)
        widths = {"audio": config.audio.width, "visual": config.video.width, "audio_visual": config.fusion.width}
        text = config.text.width
        widths |= {"audio_text": text, "visual_text": text, "audio_visual_text": text,
                   "audio_plus_text": config.audio.width + text, "visual_plus_text": config.video.width + text}
        self.heads = nn.ModuleDict({name: ContrastiveHead(widths[name], config.output_dim) for name in self.HEADS})

    @property
    def embed_dim(self) -> int:
        return self.config.output_dim

    @property
    def frame_size(self) -> int:
        return self.config.frame_encoder.image_size

    def preprocess_video(self, video) -> VideoBatch:
        """Paths, or uint8 frame arrays [F, H, W, 3] (one or a list) -> VideoBatch. Files give 16 frames at
        int(i * (T - 1) / 15) for the 16-frame models and every native frame for the others; each frame is
        squashed to the frame encoder's square size."""
        from sensorium.features.video_frames import squash_frames

        items = video if isinstance(video, (list, tuple)) else [video]
        if not items:
            raise ValueError("no video given")
        stacks, stamps = [], []
        for item in items:
            if isinstance(item, (str, Path)):
                stack, times = read_squashed_frames(item, self.config.video_frames, self.frame_size)
                stacks.append(stack)
                stamps.append(tuple(times))
                continue
            frames = torch.as_tensor(item)
            if self.config.video_frames:
                total, count = frames.shape[0], self.config.video_frames
                frames = frames[[int(i * (total - 1) / (count - 1)) for i in range(count)]]
            stacks.append(squash_frames(frames, self.frame_size))
            stamps.append(None)
        counts = torch.tensor([len(s) for s in stacks])
        pixels = torch.zeros(len(stacks), int(counts.max()), *stacks[0].shape[1:])
        for row, stack in enumerate(stacks):
            pixels[row, : len(stack)] = stack
        mask = torch.arange(pixels.shape[1])[None, :] < counts[:, None]
        return VideoBatch(pixels, mask, tuple(stamps) if all(s is not None for s in stamps) else None)

    def _video_batch(self, video) -> VideoBatch:
        if isinstance(video, VideoBatch):
            return video
        if isinstance(video, dict) and "pixel_values_videos" in video:
            pixels = video["pixel_values_videos"]
            return VideoBatch(pixels, video.get("padding_mask_videos", torch.ones(pixels.shape[:2], dtype=torch.bool)))
        return self.preprocess_video(video)

    def video_tokens(self, video) -> tuple[torch.Tensor, torch.Tensor]:
        """Video encoder output [B, 1 + F, width] (class token first) and the frame mask [B, F]."""
        batch = self._video_batch(video)
        mask = batch.padding_mask_videos.to(self.device).bool()
        features = self.video.frame_features(batch.pixel_values_videos.to(self.device, self.dtype), mask)
        return self.video(features, mask), mask

    def encode(self, audio=None, video=None, text=None, sampling_rate: int | None = None) -> PEAVOutput:
        """Embeddings for what is given, with the original's rules: audio + video fill the audio, visual and
        audio_visual fields (and, with text, all five text fields); video alone fills visual (+ visual_text,
        visual_plus_text); audio alone fills audio (+ audio_text, audio_plus_text); text alone fills only
        audio_visual_text (use `encode_text(text, head=...)` for the other text heads)."""
        if audio is None and video is None and text is None:
            raise ValueError("give audio, video or text")
        out = PEAVOutput()
        heads = self.heads
        text_vec = self.text_features(text) if text is not None else None
        audio_out = self.audio_tokens(audio, sampling_rate) if audio is not None else None
        video_out = self.video_tokens(video) if video is not None else None
        if audio_out is not None:
            out.audio_embeds = heads["audio"](audio_out[0][:, 0])
        if video_out is not None:
            out.visual_embeds = heads["visual"](video_out[0][:, 0])
        if audio_out is not None and video_out is not None:
            fused = self.fusion(audio_out[0][:, 1:], audio_out[1], video_out[0][:, 1:], video_out[1])
            out.audio_visual_embeds = heads["audio_visual"](fused[:, 0])
        if text_vec is None:
            return out
        if audio_out is None and video_out is None:
            out.audio_visual_text_embeds = heads["audio_visual_text"](text_vec)
            return out
        if audio_out is not None:
            out.audio_text_embeds = heads["audio_text"](text_vec)
            out.audio_plus_text_embeds = heads["audio_plus_text"](torch.cat([audio_out[0][:, 0], text_vec], dim=-1))
        if video_out is not None:
            out.visual_text_embeds = heads["visual_text"](text_vec)
            out.visual_plus_text_embeds = heads["visual_plus_text"](torch.cat([video_out[0][:, 0], text_vec], dim=-1))
        if audio_out is not None and video_out is not None:
            out.audio_visual_text_embeds = heads["audio_visual_text"](text_vec)
        return out

    def encode_audio(self, audio, sampling_rate: int | None = None) -> torch.Tensor:
        return self.heads["audio"](self.audio_tokens(audio, sampling_rate)[0][:, 0])

    def encode_video(self, video) -> torch.Tensor:
        return self.heads["visual"](self.video_tokens(video)[0][:, 0])

    def encode_audio_video(self, audio, video, sampling_rate: int | None = None) -> torch.Tensor:
        audio_out, video_out = self.audio_tokens(audio, sampling_rate), self.video_tokens(video)
        fused = self.fusion(audio_out[0][:, 1:], audio_out[1], video_out[0][:, 1:], video_out[1])
        return self.heads["audio_visual"](fused[:, 0])

    def encode_text(self, text, head: str = "audio_visual") -> torch.Tensor:
        """Text embeddings through one head: "audio" (to compare with audio_embeds), "visual" (with
        visual_embeds) or "audio_visual" (with audio_visual_embeds)."""
        if head not in ("audio", "visual", "audio_visual"):
            raise ValueError(f"head must be 'audio', 'visual' or 'audio_visual', got {head!r}")
        return self.heads[f"{head}_text"](self.text_features(text))


@dataclass
class AFrameOutput:
    audio_embeds: torch.Tensor  # [B, T, D] one per 40 ms frame (padding frames included)
    text_embeds: torch.Tensor  # [B_t, D]
    logits: torch.Tensor  # [B_t, T]: text i scored against audio i (one audio broadcasts to every text)
    frames: list[int]  # valid frames of each audio
    spans: list[list[list[float]]] | None = None


class PEAFrameModel(_PEAudioModel):
    """PE-A-Frame: per-40 ms-frame scores of audio against text descriptions, and the spans where they hold."""

    def __init__(self, config: PEAVConfig):
        super().__init__(config)
        self.text_head = ContrastiveHead(config.text.width, config.output_dim)
        self.audio_head = ContrastiveHead(config.audio.width, config.output_dim)
        self.logit_scale = nn.Parameter(torch.zeros(1))
        self.logit_bias = nn.Parameter(torch.zeros(1))

    def encode_text(self, text) -> torch.Tensor:
        return self.text_head(self.text_features(text))

    def encode_audio_frames(self, audio, sampling_rate: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame embeddings [B, T, D] and the frame mask [B, T]."""
        tokens, mask = self.audio_tokens(audio, sampling_rate)
        return self.audio_head(tokens[:, 1:]), mask

    def encode(self, audio, text, threshold: float | None = 0.3, sampling_rate: int | None = None) -> AFrameOutput:
        """The original's forward: text i against audio i (or one audio against every text), with spans at
        `threshold` (None: no spans). Spans stop at each clip's last frame, never in batch padding."""
        audio_embeds, mask = self.encode_audio_frames(audio, sampling_rate)
        text_embeds = self.encode_text(text)
        if audio_embeds.shape[0] not in (1, text_embeds.shape[0]):
            raise ValueError(f"{audio_embeds.shape[0]} audio clips and {text_embeds.shape[0]} texts: give one "
                             "clip, or one text per clip")
        logits = (audio_embeds @ text_embeds[:, :, None]).squeeze(-1) * self.logit_scale + self.logit_bias
        frames = mask.sum(-1).tolist()
        out = AFrameOutput(audio_embeds, text_embeds, logits, frames)
        if threshold is not None:
            valid = [frames[0]] * len(logits) if len(frames) == 1 else frames
            hop, rate = self.config.dac.hop, self.config.dac.sampling_rate
            out.spans = [frame_spans(row[:n], threshold, hop, rate) for row, n in zip(logits, valid)]
        return out

    def frame_logits(
        self, audio, texts, sampling_rate: int | None = None, window: float | None = None, hop: float | None = None
    ) -> torch.Tensor:
        """Scores [n_texts, frames] of one clip against each text (dot * logit_scale + logit_bias; the sigmoid
        is the probability that the described sound is in each 40 ms frame).

        A clip up to the encoder's position limit (~400 s) is one pass, as the original. Longer clips, or any
        clip when `window` is given, are scored in windows of `window` seconds every `hop` seconds (defaults
        300 and 280; the last window is aligned to the end), and a frame seen by several windows gets the
        mean of their scores. The codec runs once over the whole clip (in chunks), so window edges see real
        context. A file path is decoded and encoded as a stream (see `stream_latents`), so a long file never
        sits in memory whole; arrays go through `dac_chunked` in one piece."""
        path = _single_path(audio)
        if path is not None:
            from sensorium.media.audio import stream_audio

            latents, _ = self.stream_latents(stream_audio(path, self.sampling_rate, downmix="ffmpeg"))
            return self.logits_from_latents(latents, texts, window, hop)
        batch = self._audio_batch(audio, sampling_rate)
        if batch.input_values.shape[0] != 1:
            raise ValueError("frame_logits takes one clip")
        frames = int(batch.padding_mask.sum()) // self.config.dac.hop
        values = batch.input_values.to(self.device, self.dtype).reshape(-1)[: frames * self.config.dac.hop]
        with torch.no_grad():
            latents = self.audio.dac_chunked(values)
        return self.logits_from_latents(latents, texts, window, hop)

    def stream_latents(self, blocks, chunk: int = STREAM_CODEC_CHUNK) -> tuple[torch.Tensor, int]:
        """DAC-VAE latents [frames, latent] of a stream of 48 kHz mono blocks, and how many samples it held.

        The codec runs in `chunk`-frame chunks with CODEC_MARGIN frames of context on each side, dac_chunked's
        rule (with chunk=CODEC_CHUNK the latents are dac_chunked's bit for bit), so memory stays bounded
        whatever the length: the samples of about one chunk, the codec's activations over one chunk, and the
        latents (128 floats per 40 ms, 46 MB an hour)."""
        codec = StreamingCodec(self.audio, chunk)
        with torch.no_grad():
            for block in blocks:
                codec.push(block)
            return codec.finish(), codec.samples

    def logits_from_latents(
        self, latents: torch.Tensor, texts, window: float | None = None, hop: float | None = None
    ) -> torch.Tensor:
        """Scores [n_texts, frames] from one clip's DAC latents [frames, latent]: one pass up to the position
        limit, else windows with overlaps averaged (see `frame_logits`)."""
        limit = self.config.audio.max_positions - 1
        frames = latents.shape[0]
        if window is None and frames <= limit:
            # The original's forward (one audio broadcast against every text), as `encode` computes it.
            # contiguous: `encode` copies the latents into a batch, and a strided input rounds differently.
            audio_embeds = self.audio_head(self.audio(latents[None].contiguous(), None)[:, 1:])
            text_embeds = self.encode_text(texts)
            return (audio_embeds @ text_embeds[:, :, None]).squeeze(-1) * self.logit_scale + self.logit_bias
        size, step = self.window_frames(window, hop)
        text = self.encode_text(texts)
        total = latents.new_zeros(text.shape[0], frames, dtype=torch.float32)
        count = latents.new_zeros(frames, dtype=torch.float32)
        for start in window_starts(frames, size, step):
            tokens = self.audio(latents[None, start : start + size], None)
            scores = (self.audio_head(tokens[0, 1:]) @ text.T).T * self.logit_scale + self.logit_bias
            total[:, start : start + size] += scores.float()
            count[start : start + size] += 1
        return total / count

    def window_frames(self, window: float | None = None, hop: float | None = None) -> tuple[int, int]:
        """Window and hop in frames (defaults 300 s and 280 s, or the window); ValueError when out of range."""
        limit = self.config.audio.max_positions - 1
        size = _frames(window if window is not None else DEFAULT_WINDOW_SECONDS, self.frame_seconds)
        step = _frames(hop if hop is not None else min(DEFAULT_HOP_SECONDS, window or DEFAULT_WINDOW_SECONDS), self.frame_seconds)
        if not 1 <= size <= limit or not 1 <= step <= size:
            raise ValueError(f"window must be 0.04..{limit * self.frame_seconds:.2f} s and hop 0.04 s..window")
        return size, step

    def localize(
        self,
        audio,
        texts,
        threshold: float = 0.3,
        sampling_rate: int | None = None,
        window: float | None = None,
        hop: float | None = None,
        median_filter: int | None = None,
        min_duration: float | None = None,
        merge_gap: float | None = None,
    ) -> list[list[list[float]]]:
        """Spans [[start_s, end_s], ...] per text where the described sound is present in one clip.

        By default the original rule, exactly: runs of frames with sigmoid(logit) > threshold, half-open,
        40 ms frames; spans stop at the clip's last frame. Optional post-processing, off by default and
        applied in this order: a median filter over `median_filter` frames (odd) on the probabilities,
        merging spans separated by at most `merge_gap` seconds, dropping spans shorter than `min_duration`."""
        logits = self.frame_logits(audio, texts, sampling_rate, window, hop)
        hop_samples, rate = self.config.dac.hop, self.config.dac.sampling_rate
        gap = None if merge_gap is None else round(merge_gap / self.frame_seconds)
        shortest = None if min_duration is None else round(min_duration / self.frame_seconds)
        return [runs_to_seconds(detect_runs(row, threshold, median_filter, gap, shortest), hop_samples, rate)
                for row in logits]


DEFAULT_WINDOW_SECONDS = 300.0
DEFAULT_HOP_SECONDS = 280.0


def _single_path(audio) -> str | Path | None:
    """The file when `audio` names exactly one (a path, or a list holding one path)."""
    if isinstance(audio, (list, tuple)) and len(audio) == 1:
        audio = audio[0]
    return audio if isinstance(audio, (str, Path)) else None


class StreamingCodec:
    """dac_chunked's rule over a stream of samples: chunks of `chunk` frames, each encoded with `margin`
    frames of real context on both sides and only its own frames kept; a clip of at most chunk + 2 * margin
    frames is one pass. The rule depends on the clip's length only at its end, so a chunk is encoded as soon
    as its right margin has arrived (and the clip is known to need chunks); the tail, reflect-padded to a
    whole frame like `reflect_pad_batch`, waits for the end. Held: the samples from the next chunk's left
    margin on (at most chunk + 2 * margin frames plus one block), and the latents."""

    def __init__(self, tower: AudioTower, chunk: int = STREAM_CODEC_CHUNK, margin: int = CODEC_MARGIN):
        if chunk <= margin:
            raise ValueError("codec chunks must be longer than their margins")
        self.tower, self.chunk, self.margin = tower, chunk, margin
        self.hop = tower.dac.config.hop
        self.samples = 0  # pushed so far
        self.next_frame = 0  # first frame without latents (a multiple of chunk)
        self._held: list = []  # numpy blocks holding samples [_held_from, samples)
        self._held_from = 0
        self._latents: list[torch.Tensor] = []

    @property
    def held_samples(self) -> int:
        return self.samples - self._held_from

    def push(self, block) -> None:
        import numpy as np

        block = np.asarray(block, dtype=np.float32).reshape(-1)
        if len(block):
            self._held.append(block)
            self.samples += len(block)
        while self._chunk_ready():
            first = self.next_frame
            self._encode(first, first + self.chunk, first - self.margin, first + self.chunk + self.margin,
                         self._joined())

    def finish(self) -> torch.Tensor:
        """Latents [frames, latent] of everything pushed (frames = samples / hop, rounded up)."""
        from sensorium.features.waveform import reflect_pad_batch

        if self.samples == 0:
            raise ValueError("no audio samples")
        # The held samples start on a frame boundary, so padding them pads the clip as a whole would be.
        tail = reflect_pad_batch([self._joined()], self.hop)[0][0, 0].numpy()
        frames = self._held_from // self.hop + len(tail) // self.hop
        for first, last, lo, hi in codec_plan(frames, self.chunk, self.margin):
            if first >= self.next_frame:
                self._encode(first, last, lo, hi, tail)
        latents = torch.cat(self._latents)
        self._latents = []
        return latents

    def _chunk_ready(self) -> bool:
        one_pass = (self.chunk + 2 * self.margin) * self.hop
        right_edge = (self.next_frame + self.chunk + self.margin) * self.hop
        return self.samples > one_pass and self.samples >= right_edge

    def _joined(self):
        import numpy as np

        if len(self._held) != 1:
            self._held = [np.concatenate(self._held) if self._held else np.zeros(0, np.float32)]
        return self._held[0]

    def _encode(self, first: int, last: int, lo: int, hi: int, signal) -> None:
        """Latents of frames [first, last) from frames [lo, hi) of the clip; `signal` starts at _held_from."""
        lo = max(lo, 0)
        offset = self._held_from
        samples = torch.from_numpy(signal[lo * self.hop - offset : hi * self.hop - offset])
        weight = self.tower.data_proj.weight
        latents = self.tower.dac(samples.to(weight.device, weight.dtype)[None, None])[0]
        self._latents.append(latents[first - lo : last - lo].contiguous())
        self.next_frame = last
        keep = max(0, last - self.margin) * self.hop  # the next chunk's left margin
        if keep > offset and signal is self._held[0]:
            self._held = [signal[keep - offset :]]
            self._held_from = keep


def codec_plan(frames: int, chunk: int = CODEC_CHUNK, margin: int = CODEC_MARGIN) -> list[tuple[int, int, int, int]]:
    """dac_chunked's chunks of a clip of `frames` frames: (first, last, lo, hi) = encode frames [lo, hi) and
    keep [first, last)."""
    if frames <= chunk + 2 * margin:
        return [(0, frames, 0, frames)]
    return [(first, min(first + chunk, frames), max(0, first - margin), min(frames, first + chunk + margin))
            for first in range(0, frames, chunk)]


def _frames(seconds: float, frame_seconds: float) -> int:
    return max(1, round(seconds / frame_seconds))


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
    edges = torch.diff(F.pad(probs > threshold, (1, 1), value=False).to(torch.int8)).nonzero()[:, 0]
    runs = [(start, end) for start, end in edges.view(-1, 2).tolist()]
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


def frame_spans(logits: torch.Tensor, threshold: float, hop: int, sampling_rate: int) -> list[list[float]]:
    """The original rule: runs of frames with sigmoid(logit) > threshold, as [start_s, end_s) lists."""
    return runs_to_seconds(detect_runs(logits, threshold), hop, sampling_rate)


def read_squashed_frames(path, count: int | None, size: int) -> tuple[torch.Tensor, list[float]]:
    """Frames of a video file, squashed to size x size as they are decoded (full-size frames of a long clip
    would not fit in memory), and their times: `count` frames at int(i * (T - 1) / (count - 1)), or every
    frame when `count` is None."""
    from sensorium.features.video_frames import squash_frames
    from sensorium.media.video import EveryFrame, Uniform, VideoReader

    with VideoReader(path) as video:
        indices = video.sample(Uniform(count) if count else EveryFrame())
        squashed = {i: (t, squash_frames(rgb[None], size)[0]) for i, t, rgb in video.frames(indices)}
    return torch.stack([squashed[i][1] for i in indices]), [squashed[i][0] for i in indices]


# ---------------------------------------------------------------------------------------------------------
# Configs from checkpoint files (config.json: the original schema, or transformers' pe_audio[_video])


def _encoder(data: dict) -> EncoderConfig:
    return EncoderConfig(
        width=data["hidden_size"],
        layers=data["num_hidden_layers"],
        heads=data["num_attention_heads"],
        mlp_hidden=data["intermediate_size"],
        max_positions=data.get("max_position_embeddings", 10000),
        eps=data.get("rms_norm_eps", 1e-5),
    )


def _dac(data: dict) -> DacConfig:
    dac = DacConfig(
        channels=data.get("encoder_hidden_size", 64),
        strides=tuple(data.get("downsampling_ratios", (2, 8, 10, 12))),
        latent_dim=data.get("codebook_dim", 128),
        sampling_rate=data.get("sampling_rate", SAMPLING_RATE),
    )
    width = data.get("codebook_size") if "hop_length" not in data else data.get("hidden_size")
    if width is not None and width != dac.width:  # the codec's output feeds the bottleneck
        raise ValueError(f"DAC config: bottleneck input {width} != encoder width {dac.width}")
    return dac


def _modernbert(data: dict, used_layers: int) -> ModernBertConfig:
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


def _check_text_model(data: dict) -> None:
    for key, want in (("hidden_activation", "gelu"), ("attention_bias", False), ("mlp_bias", False), ("norm_bias", False)):
        if data.get(key, want) != want:
            raise ValueError(f"text model with {key}={data[key]!r} is not a released PE-AV configuration")


def _frame_encoder_original(name: str, data: dict) -> VisionConfig:
    """The frame encoder a config names: a PE-Core architecture, or one described in the file itself."""
    described = data.get("fixture_pe_encoder_registry", {}).get(name)
    if described is not None:
        width = described["width"]
        return VisionConfig(
            image_size=described["image_size"],
            patch_size=described["patch_size"],
            width=width,
            layers=described["layers"],
            heads=described["heads"],
            mlp_hidden=int(width * described.get("mlp_ratio", 4.0)),
            cls_token=described.get("use_cls_token", True),
            layerscale=described.get("ls_init_value") is not None,
            ln_post=described.get("use_ln_post", True),
            attn_pool=described.get("pool_type", "attn") == "attn",
            pool_heads=described.get("attn_pooler_heads", 8),
            output_dim=described["output_dim"],
        )
    arch = pe.ARCHS.get(name)
    if arch is None or not arch.is_clip:
        raise ValueError(f"unknown frame encoder {name!r} (expected a PE-Core model such as PE-Core-L14-336)")
    return arch.vision


def _frame_encoder_timm(data: dict) -> VisionConfig:
    from dataclasses import replace

    arch = pe.ARCHS.get(pe.TIMM_ARCHITECTURES.get(data.get("architecture", ""), ""))
    if arch is None or not arch.is_clip:
        raise ValueError(f"unknown frame encoder architecture {data.get('architecture')!r}")
    vision, args = arch.vision, data.get("model_args") or {}
    width = args.get("embed_dim", vision.width)
    return replace(
        vision,
        image_size=args.get("img_size", vision.image_size),
        patch_size=args.get("patch_size", vision.patch_size),
        width=width,
        layers=args.get("depth", vision.layers),
        heads=args.get("num_heads", vision.heads),
        mlp_hidden=int(width * args["mlp_ratio"]) if "mlp_ratio" in args else vision.mlp_hidden,
        # transformers builds the head from the label count (it drops `num_classes`), so that is what the
        # saved weights have
        output_dim=len(data["label_names"]) if data.get("label_names") else data.get("num_classes") or vision.output_dim,
    )


def config_from_dict(data: dict, name: str, video_frames: int | None = None) -> PEAVConfig:
    """A PEAVConfig from a config.json in either published schema."""
    if "audio_visual_model" in data or ("audio_model" in data and "dac_vae_encoder" in data["audio_model"]):
        _check_text_model(data["text_model"])
        nth = data.get("nth_text_layer")
        if nth is None:  # the original would then pool after the final norm; no released model does
            raise ValueError("config without nth_text_layer: not a released PE-AV configuration")
        text = _modernbert(data["text_model"], nth)
        if "audio_visual_model" not in data:
            audio = data["audio_model"]
            return PEAVConfig(name, "pe-a-frame", _dac(audio["dac_vae_encoder"]), _encoder(audio["audio_transformer"]),
                              text, data.get("output_dim", text.width))
        av = data["audio_visual_model"]
        visual = av["visual_model"]
        fixed = visual.get("fixed_len_video", False)
        return PEAVConfig(
            name, "pe-av", _dac(av["audio_model"]["dac_vae_encoder"]), _encoder(av["audio_model"]["audio_transformer"]),
            text, data.get("output_dim", text.width),
            video=_encoder(visual["visual_transformer"]), fusion=_encoder(av["audio_visual_transformer"]),
            frame_encoder=_frame_encoder_original(visual.get("pe_encoder", "PE-Core-L14-336"), data),
            video_frames=16 if fixed else video_frames,
        )
    model_type = data.get("model_type")
    if model_type not in ("pe_audio_video", "pe_audio"):
        raise ValueError(f"not a PE-AV / PE-A-Frame config (model_type {model_type!r})")
    _check_text_model(data["text_config"])
    text = _modernbert(data["text_config"], data["text_config"].get("num_hidden_layers", 22))
    if model_type == "pe_audio":
        if "PeAudioFrameLevelModel" not in (data.get("architectures") or ["PeAudioFrameLevelModel"]):
            raise ValueError("only the frame-level PE audio model (PE-A-Frame) has a checkpoint of its own")
        audio = data["audio_config"]
        return PEAVConfig(name, "pe-a-frame", _dac(audio["dac_config"]), _encoder(audio), text, text.width)
    av = data["audio_video_config"]
    return PEAVConfig(
        name, "pe-av", _dac(av["audio_config"]["dac_config"]), _encoder(av["audio_config"]), text, text.width,
        video=_encoder(av["video_config"]), fusion=_encoder(av),
        frame_encoder=_frame_encoder_timm(av["video_config"]["vision_config"]),
        video_frames=video_frames,
    )


def config_from_files(files: dict[str, dict], name: str) -> PEAVConfig | None:
    """The config of a PE-AV / PE-A-Frame checkpoint, or None when its config.json describes something else.
    Models whose name ends in -16-frame sample 16 frames per video (the transformers config does not say)."""
    data = files.get("config.json", {})
    is_original = "audio_visual_model" in data or "dac_vae_encoder" in data.get("audio_model", {})
    if not is_original and data.get("model_type") not in ("pe_audio_video", "pe_audio"):
        return None
    return config_from_dict(data, name, 16 if name.endswith("-16-frame") else None)


# ---------------------------------------------------------------------------------------------------------
# Checkpoint layouts. Keys: the file's names ("{i}" is a layer index); values: ours.

def _dac_map(prefix: str) -> KeyMap:
    key_map: KeyMap = {
        "conv1.weight": "conv_in.weight",
        "conv1.bias": "conv_in.bias",
        "block.{i}.snake1.alpha": "blocks.{i}.snake.alpha",
        "block.{i}.conv1.weight": "blocks.{i}.down.weight",
        "block.{i}.conv1.bias": "blocks.{i}.down.bias",
        "snake1.alpha": "snake_out.alpha",
        "conv2.weight": "conv_out.weight",
        "conv2.bias": "conv_out.bias",
    }
    for unit in range(3):
        for name in ("snake1.alpha", "snake2.alpha", "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"):
            key_map[f"block.{{i}}.res_unit{unit + 1}.{name}"] = f"blocks.{{i}}.units.{unit}.{name}"
    return prefixed(prefix, "", key_map)


ENCODER_LAYERS: KeyMap = {
    "layers.{i}.input_layernorm.weight": "layers.{i}.attn_norm.weight",
    "layers.{i}.self_attn.q_proj.weight": "layers.{i}.attn.q.weight",
    "layers.{i}.self_attn.k_proj.weight": "layers.{i}.attn.k.weight",
    "layers.{i}.self_attn.v_proj.weight": "layers.{i}.attn.v.weight",
    "layers.{i}.self_attn.o_proj.weight": "layers.{i}.attn.o.weight",
    "layers.{i}.self_attn.q_norm.weight": "layers.{i}.attn.q_norm.weight",
    "layers.{i}.self_attn.k_norm.weight": "layers.{i}.attn.k_norm.weight",
    "layers.{i}.post_attention_layernorm.weight": "layers.{i}.mlp_norm.weight",
    "layers.{i}.mlp.gate_proj.weight": "layers.{i}.mlp.gate.weight",
    "layers.{i}.mlp.up_proj.weight": "layers.{i}.mlp.up.weight",
    "layers.{i}.mlp.down_proj.weight": "layers.{i}.mlp.down.weight",
    "norm.weight": "norm.weight",
    "output.weight": "output.weight",
}


def _patcher(prefix: str, cls_name: str) -> KeyMap:
    return {
        f"{prefix}{cls_name}": "cls_token",
        f"{prefix}resnet_block.block1.groupnorm.weight": "patch1.norm.weight",
        f"{prefix}resnet_block.block1.groupnorm.bias": "patch1.norm.bias",
        f"{prefix}resnet_block.block1.project.weight": "patch1.conv.weight",
        f"{prefix}resnet_block.block1.project.bias": "patch1.conv.bias",
        f"{prefix}resnet_block.block2.groupnorm.weight": "patch2.norm.weight",
        f"{prefix}resnet_block.block2.groupnorm.bias": "patch2.norm.bias",
        f"{prefix}resnet_block.block2.project.weight": "patch2.conv.weight",
        f"{prefix}resnet_block.block2.project.bias": "patch2.conv.bias",
    }


ORIGINAL_ENCODER: KeyMap = _patcher("embeddings.", "cls_token") | ENCODER_LAYERS
TRANSFORMERS_ENCODER: KeyMap = _patcher("patch_embedder.", "class_embedding") | ENCODER_LAYERS

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


def _head(file_name: str, ours: str) -> KeyMap:
    return {
        f"{file_name}.layer_norm.weight": f"{ours}.norm.weight",
        f"{file_name}.layer_norm.bias": f"{ours}.norm.bias",
        f"{file_name}.proj.weight": f"{ours}.proj.weight",
    }


def _original_audio(prefix: str) -> KeyMap:
    return (
        _dac_map(f"{prefix}dac_vae_encoder.encoder.")
        | {
            f"{prefix}dac_vae_encoder.bottleneck.in_proj.weight": FirstHalf("bottleneck.weight"),
            f"{prefix}dac_vae_encoder.bottleneck.in_proj.bias": FirstHalf("bottleneck.bias"),
            f"{prefix}dac_vae_encoder.bottleneck.out_proj.weight": Unused(),  # the VAE decoder side
            f"{prefix}dac_vae_encoder.bottleneck.out_proj.bias": Unused(),
        }
    )


def _transformers_audio(prefix: str) -> KeyMap:
    return _dac_map(f"{prefix}embedder.dac_encoder.") | {
        f"{prefix}embedder.bottleneck.weight": "bottleneck.weight",
        f"{prefix}embedder.bottleneck.bias": "bottleneck.bias",
    }


def _audio_tower(dac: KeyMap, data_proj: str, encoder_prefix: str, encoder: KeyMap) -> KeyMap:
    return (
        prefixed("", "audio.dac.", dac)
        | {f"{data_proj}.weight": "audio.data_proj.weight", f"{data_proj}.bias": "audio.data_proj.bias"}
        | prefixed(encoder_prefix, "audio.encoder.", encoder)
    )


_AV = "audio_visual_model."
_AV_HEADS = ("audio", "visual", "audio_visual", "audio_text", "visual_text", "audio_visual_text",
             "audio_plus_text", "visual_plus_text")
_HF_AV_HEADS = {
    "audio": "audio_model.audio_head", "visual": "video_model.video_head", "audio_visual": "audio_video_head",
    "audio_text": "audio_model.text_audio_head", "visual_text": "video_model.text_video_head",
    "audio_visual_text": "text_audio_video_head", "audio_plus_text": "audio_plus_text_head",
    "visual_plus_text": "video_plus_text_head",
}
_HF_AV_LOGITS = ("audio_video_", "text_audio_video_", "audio_plus_text_", "video_plus_text_",
                 "audio_model.text_audio_", "video_model.text_video_")

LAYOUTS: dict[str, KeyMap] = {
    # perception_models branch: PEAudioVisual.state_dict()
    "original": (
        prefixed("text_model.", "text.", TEXT)
        | _audio_tower(_original_audio(f"{_AV}audio_model."), f"{_AV}audio_model.data_proj",
                       f"{_AV}audio_model.audio_transformer.", ORIGINAL_ENCODER)
        | prefixed(f"{_AV}visual_model.pe_encoder.", "video.frames.", ORIGINAL_VISION)
        | {f"{_AV}visual_model.proj.weight": "video.proj.weight",
           f"{_AV}visual_model.data_proj.weight": "video.data_proj.weight",
           f"{_AV}visual_model.data_proj.bias": "video.data_proj.bias"}
        | prefixed(f"{_AV}visual_model.visual_transformer.", "video.encoder.", ORIGINAL_ENCODER)
        | prefixed(f"{_AV}audio_visual_transformer.", "fusion.encoder.", ORIGINAL_ENCODER)
        | {f"{_AV}audio_visual_transformer.modality_aligner.conv.weight": "fusion.video_proj.weight",
           f"{_AV}audio_visual_transformer.modality_aligner.conv.bias": "fusion.video_proj.bias",
           f"{_AV}audio_visual_transformer.modality_aligner.layer_norm.weight": "fusion.video_norm.weight",
           f"{_AV}audio_visual_transformer.modality_aligner.layer_norm.bias": "fusion.video_norm.bias",
           f"{_AV}audio_visual_transformer.concat_modality_proj.weight": "fusion.concat_proj.weight",
           f"{_AV}audio_visual_transformer.concat_modality_proj.bias": "fusion.concat_proj.bias",
           f"{_AV}audio_visual_transformer.data_proj.weight": "fusion.data_proj.weight",
           f"{_AV}audio_visual_transformer.data_proj.bias": "fusion.data_proj.bias"}
        | {k: v for name in _AV_HEADS for k, v in _head(f"{name}_head", f"heads.{name}").items()}
    ),
    # main branch: transformers PeAudioVideoModel.save_pretrained (tied copies saved once)
    "transformers": (
        prefixed("text_model.", "text.", TEXT)
        | _audio_tower(_transformers_audio("audio_model.audio_encoder."),
                       "audio_model.audio_encoder.embedder.data_proj", "audio_model.audio_encoder.", TRANSFORMERS_ENCODER)
        | prefixed("video_model.video_encoder.embedder.vision_model.timm_model.", "video.frames.", TIMM_VISION)
        | {"video_model.video_encoder.embedder.proj.weight": "video.proj.weight",
           "video_model.video_encoder.embedder.data_proj.weight": "video.data_proj.weight",
           "video_model.video_encoder.embedder.data_proj.bias": "video.data_proj.bias"}
        | prefixed("video_model.video_encoder.", "video.encoder.", TRANSFORMERS_ENCODER)
        | prefixed("audio_video_encoder.", "fusion.encoder.", TRANSFORMERS_ENCODER)
        | {"audio_video_encoder.embedder.video_proj.weight": "fusion.video_proj.weight",
           "audio_video_encoder.embedder.video_proj.bias": "fusion.video_proj.bias",
           "audio_video_encoder.embedder.video_norm.weight": "fusion.video_norm.weight",
           "audio_video_encoder.embedder.video_norm.bias": "fusion.video_norm.bias",
           "audio_video_encoder.embedder.concat_modality_proj.weight": "fusion.concat_proj.weight",
           "audio_video_encoder.embedder.concat_modality_proj.bias": "fusion.concat_proj.bias",
           "audio_video_encoder.embedder.data_proj.weight": "fusion.data_proj.weight",
           "audio_video_encoder.embedder.data_proj.bias": "fusion.data_proj.bias"}
        | {k: v for name, hf in _HF_AV_HEADS.items() for k, v in _head(hf, f"heads.{name}").items()}
        # transformers' contrastive-loss scalars: not part of the embedding model (saved as 0.0)
        | {f"{p}logit_{kind}": Unused() for p in _HF_AV_LOGITS for kind in ("scale", "bias")}
    ),
    # perception_models branch: PEAudioFrame.state_dict()
    "original_frame": (
        prefixed("text_model.", "text.", TEXT)
        | _audio_tower(_original_audio("audio_model."), "audio_model.data_proj",
                       "audio_model.audio_transformer.", ORIGINAL_ENCODER)
        | _head("text_head", "text_head") | _head("audio_head", "audio_head")
        | {"logit_scale": "logit_scale", "logit_bias": "logit_bias"}
    ),
    # main branch: transformers PeAudioFrameLevelModel.save_pretrained
    "transformers_frame": (
        prefixed("text_model.", "text.", TEXT)
        | _audio_tower(_transformers_audio("audio_encoder."), "audio_encoder.embedder.data_proj",
                       "audio_encoder.", TRANSFORMERS_ENCODER)
        | _head("text_audio_head", "text_head") | _head("audio_head", "audio_head")
        | {"text_audio_logit_scale": "logit_scale", "text_audio_logit_bias": "logit_bias"}
    ),
}


def key_map(layout: str, config: PEAVConfig) -> KeyMap:
    """The layout's map, plus the text layers the file holds past the pooled one (the original layout keeps
    all of ModernBERT's layers; the model runs only up to `nth_text_layer`)."""
    extra = {
        f"text_model.layers.{i}.{name}.weight": Unused()
        for i in range(config.text.layers, config.text.file_layers)
        for name in ("attn_norm", "attn.Wqkv", "attn.Wo", "mlp_norm", "mlp.Wi", "mlp.Wo")
    }
    return extra | LAYOUTS[layout]


def attach(model: _PEAudioModel, folder: Path) -> None:
    """The tokenizer beside the weights."""
    if (Path(folder) / "tokenizer.json").is_file():
        model.tokenizer_file = str(Path(folder) / "tokenizer.json")


def detect_layout(keys: set[str]) -> str:
    if f"{_AV}audio_model.data_proj.weight" in keys:
        return "original"
    if "audio_model.audio_encoder.embedder.data_proj.weight" in keys:
        return "transformers"
    if "audio_model.data_proj.weight" in keys:
        return "original_frame"
    if "audio_encoder.embedder.data_proj.weight" in keys:
        return "transformers_frame"
    shown = ", ".join(sorted(keys)[:8])
    raise ValueError(f"not a PE-AV / PE-A-Frame checkpoint in a known layout (first keys: {shown})")


def build(config: PEAVConfig, layout: str) -> _PEAudioModel:
    """An uninitialised model (create it under torch.device('meta')) for `config`."""
    if layout.endswith("_frame") != config.is_frame_level:
        raise ValueError(f"{config.name} is a {config.kind} config but the weights are in the {layout} layout")
    return PEAFrameModel(config) if config.is_frame_level else PEAVModel(config)


FAMILY = Family(
    name="pe_av",
    config_type=PEAVConfig,
    layouts=tuple(LAYOUTS),
    detect_layout=detect_layout,
    key_map=key_map,
    build=build,
    config_files=("config.json",),
    config_from_files=config_from_files,
    attach=attach,
)
