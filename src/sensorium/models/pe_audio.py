"""The parts PE-AV and PE-A-Frame share: configs, the sequence encoder, the audio tower (DAC codec + encoder),
the contrastive heads, the text tower, and the base model users hold (tokenize, preprocess, audio and text
features), plus the streamed codec that keeps long files in bounded memory.

A sequence encoder is: a class token, a "patcher" (two masked GroupNorm/SiLU/conv-3 blocks with a residual,
run over the class token too), pre-norm layers (RMSNorm, per-head RMS q/k norm, 1-D RoPE on interleaved pairs
with theta = max(10000, 2 * max_positions), SwiGLU, no biases), a final RMSNorm and a Linear.

Departure from the references, on purpose (batch invariance): the original runs the DAC on the zero-padded
batch, which changes the last ~0.24 s of shorter clips (the codec sees the padding). Here the DAC runs on each
clip's own samples, so an item's outputs equal the original's single-item outputs whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sensorium.batches import AudioBatch, TokenBatch
from sensorium.keymaps import FirstHalf, KeyMap, Unused, prefixed
from sensorium.models.dac import DacConfig, DacEncoder, dac_key_map
from sensorium.models.modernbert import ModernBert, ModernBertConfig
from sensorium.models.pe import VisionConfig
from sensorium.models.family import processor_of
from sensorium.nn import RMSNorm, Rope1D, SwiGLU, apply_rope_pairs
from sensorium.nn.attention import attention_on_kernel
from sensorium.nn.sequence import reflect_pad_to_multiple
from sensorium.nn.conv import Conv1d
from sensorium.nn.linear import Linear, PackedForInference

TEXT_MISSING = "no tokenizer.json was found beside the weights"
CODEC_CHUNK = 750  # frames (30 s) per codec call on long clips
CODEC_MARGIN = 25  # frames (1 s) of context on each side of a chunk; the codec sees ~0.45 s
# Frames (6 s) per codec call when a file is streamed (PE-A-Frame). The codec's working memory is ~2.4 MB per
# frame at pe-a-frame-base width (64 channels at 48 kHz, several activations alive): ~0.5 GB for 6 s + margins,
# against ~1.9 GB for CODEC_CHUNK; the margins cost a third more codec work, which the smaller working set
# mostly wins back.
STREAM_CODEC_CHUNK = 150


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
        self.conv = Conv1d(width, width, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.conv(F.silu(self.norm(x, mask)))


class Attention(nn.Module):
    """Bias-free q/k/v/o, RMS norm of each head's q and k (one weight shared by the heads), then RoPE."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.heads, self.head_dim = config.heads, config.head_dim
        self.q = Linear(config.width, config.width, bias=False)
        self.k = Linear(config.width, config.width, bias=False)
        self.v = Linear(config.width, config.width, bias=False)
        self.o = Linear(config.width, config.width, bias=False)
        self.q_norm = RMSNorm(config.head_dim, config.eps)
        self.k_norm = RMSNorm(config.head_dim, config.eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None):
        batch, tokens, width = x.shape
        shape = (batch, tokens, self.heads, self.head_dim)
        q = self.q_norm(self.q(x).view(shape))
        k = self.k_norm(self.k(x).view(shape))
        v = self.v(x)
        valid = None if mask is None else mask[:, 0, 0]  # mask [B, 1, 1, T]: the keys to see
        out = attention_on_kernel(q.view(x.shape), k.view(x.shape), v, self.heads, rope, valid=valid)
        if out is not None:
            return self.o(out)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.view(shape).transpose(1, 2)
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
        self.output = Linear(config.width, config.width, bias=False)
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
# Towers and heads


class ContrastiveHead(nn.Module):
    def __init__(self, width: int, output_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.proj = Linear(width, output_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


class AudioTower(nn.Module):
    def __init__(self, config: PEAVConfig):
        super().__init__()
        self.dac = DacEncoder(config.dac)
        self.data_proj = Linear(config.dac.latent_dim, config.audio.width)
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


# ---------------------------------------------------------------------------------------------------------
# Models users hold


class PEAudioBase(PackedForInference):
    """What PE-AV and PE-A-Frame share: the text tower, the audio tower and their preprocessing."""

    def __init__(self, config: PEAVConfig):
        super().__init__()
        self.config = config
        self.text = ModernBert(config.text)
        self.audio = AudioTower(config)
        self.processor = None  # attached by the loader (sensorium.processors.pe_av)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def has_text(self) -> bool:
        return self.processor is not None and self.processor.has_text

    text_missing = TEXT_MISSING

    @property
    def device(self) -> torch.device:
        return self.audio.data_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.audio.data_proj.weight.dtype

    @property
    def export_modules(self) -> dict[str, tuple[int, int] | None]:
        """What `backend="openvino" | "onnxruntime"` runs on the runtime (sensorium.nn.exported): {submodule:
        its free dimension and that size's multiple}. The codec (81 % of the audio FLOPs; its 1-D convolutions
        run 2x faster on OpenVINO in float32) takes any number of samples, in hops."""
        return {"audio.dac": (-1, self.config.dac.hop)}

    @property
    def sampling_rate(self) -> int:
        return self.config.dac.sampling_rate

    @property
    def frame_samples(self) -> int:
        """Samples per audio token (the codec's hop, 1920 at 48 kHz)."""
        return self.config.dac.hop

    @property
    def frame_seconds(self) -> float:
        """Duration of one audio token (40 ms)."""
        return self.config.dac.hop / self.config.dac.sampling_rate

    @property
    def max_audio_seconds(self) -> float:
        """The longest clip one pass can take (the encoders' position limit, ~400 s)."""
        return (self.config.audio.max_positions - 1) * self.frame_seconds

    # --- preprocessing -----------------------------------------------------------------------------------

    def tokenize(self, texts: str | list[str]) -> TokenBatch:
        """ModernBERT ids and mask ([CLS] ... [SEP], truncated at 512, padded to the longest)."""
        return processor_of(self).text(texts)

    def preprocess_audio(self, audio, sampling_rate: int | None = None) -> AudioBatch:
        """Paths, arrays or tensors (one or a list) -> AudioBatch at 48 kHz mono (the processor's `audio`):
        files decoded with FFmpeg's downmix and resampler; arrays need `sampling_rate`."""
        return processor_of(self).audio(audio, sampling_rate)

    def _audio_batch(self, audio, sampling_rate: int | None = None) -> AudioBatch:
        if isinstance(audio, AudioBatch):
            return audio
        if isinstance(audio, dict) and "input_values" in audio:
            return AudioBatch(audio["input_values"], audio["padding_mask"])
        return self.preprocess_audio(audio, sampling_rate)

    def _text_batch(self, text) -> TokenBatch:
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
        if self.samples == 0:
            raise ValueError("no audio samples")
        # The held samples start on a frame boundary, so padding them pads the clip as a whole would be.
        tail = reflect_pad_to_multiple(torch.from_numpy(self._joined()), self.hop).numpy()
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


# ---------------------------------------------------------------------------------------------------------
# Configs from checkpoint files (config.json: the original schema, or transformers' pe_audio[_video])


def encoder_config_from_dict(data: dict) -> EncoderConfig:
    return EncoderConfig(
        width=data["hidden_size"],
        layers=data["num_hidden_layers"],
        heads=data["num_attention_heads"],
        mlp_hidden=data["intermediate_size"],
        max_positions=data.get("max_position_embeddings", 10000),
        eps=data.get("rms_norm_eps", 1e-5),
    )


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


def head_key_map(file_name: str, ours: str) -> KeyMap:
    return {
        f"{file_name}.layer_norm.weight": f"{ours}.norm.weight",
        f"{file_name}.layer_norm.bias": f"{ours}.norm.bias",
        f"{file_name}.proj.weight": f"{ours}.proj.weight",
    }


def original_audio_key_map(prefix: str) -> KeyMap:
    return (
        dac_key_map(f"{prefix}dac_vae_encoder.encoder.")
        | {
            f"{prefix}dac_vae_encoder.bottleneck.in_proj.weight": FirstHalf("bottleneck.weight"),
            f"{prefix}dac_vae_encoder.bottleneck.in_proj.bias": FirstHalf("bottleneck.bias"),
            f"{prefix}dac_vae_encoder.bottleneck.out_proj.weight": Unused(),  # the VAE decoder side
            f"{prefix}dac_vae_encoder.bottleneck.out_proj.bias": Unused(),
        }
    )


def transformers_audio_key_map(prefix: str) -> KeyMap:
    return dac_key_map(f"{prefix}embedder.dac_encoder.") | {
        f"{prefix}embedder.bottleneck.weight": "bottleneck.weight",
        f"{prefix}embedder.bottleneck.bias": "bottleneck.bias",
    }


def audio_tower_key_map(dac: KeyMap, data_proj: str, encoder_prefix: str, encoder: KeyMap) -> KeyMap:
    return (
        prefixed("", "audio.dac.", dac)
        | {f"{data_proj}.weight": "audio.data_proj.weight", f"{data_proj}.bias": "audio.data_proj.bias"}
        | prefixed(encoder_prefix, "audio.encoder.", encoder)
    )
