"""Audio Flamingo 3 (`nvidia/audio-flamingo-3-hf`): questions, chat and transcription over audio.

Written from transformers 5.23 (`AudioFlamingo3Processor`, `AudioFlamingo3ForConditionalGeneration`) and checked
against it. The model: an AF-Whisper encoder (Whisper-large-v3 layout with k_proj bias-free, q pre-scaled, a
key-padding mask, then 2x average pooling and a LayerNorm), a Linear-GELU-Linear projector and a Qwen2 decoder
(GQA, RoPE, RMSNorm, SwiGLU, untied head); projected audio frames replace the `<sound>` embeddings in order.
Its processor (conversations -> AF3Inputs, chunked transcription's cuts) is sensorium.processors.af3.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from sensorium.batches import AF3Inputs
from sensorium.keymaps import KeyMap
from sensorium.models.family import Family
from sensorium.nn.decoder import Decoder, DecoderConfig, config_from_transformers, transformers_key_map
from sensorium.nn.attention import attention_on_kernel
from sensorium.nn.chat import ChatModel
from sensorium.nn.generation import check_sampling
from sensorium.nn.multimodal import scatter_placeholders
from sensorium.nn.conv import Conv1d
from sensorium.nn.linear import Linear

SAMPLING_RATE = 16000  # the Whisper encoder's rate


def audio_token_count(frames: int) -> int:
    """Tokens the encoder leaves for `frames` valid mel frames: conv stride 2, then average pool 2."""
    after_conv = (frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


# ---------------------------------------------------------------------------------------------------------
# Configs


@dataclass(frozen=True)
class EncoderConfig:
    mel_bins: int = 128
    width: int = 1280
    layers: int = 32
    heads: int = 20
    mlp_hidden: int = 5120
    max_positions: int = 1500  # after the stride-2 conv: 3000 mel frames

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


@dataclass(frozen=True)
class AF3Config:
    name: str
    encoder: EncoderConfig
    decoder: DecoderConfig
    audio_token_id: int = 151669
    projector_bias: bool = True


def config_from_dict(data: dict, name: str) -> AF3Config:
    audio, text = data.get("audio_config", {}), data.get("text_config", {})
    for key, want in (("activation_function", "gelu"), ("scale_embedding", False)):
        if audio.get(key, want) != want:
            raise ValueError(f"AF3 encoder with {key}={audio[key]!r} is not a released configuration")
    for key, want in (("hidden_act", "silu"), ("tie_word_embeddings", False), ("use_sliding_window", False)):
        if text.get(key, want) != want:
            raise ValueError(f"AF3 decoder with {key}={text[key]!r} is not a released configuration")
    if data.get("projector_hidden_act", "gelu") != "gelu":
        raise ValueError("AF3 projector activation must be gelu")
    rope = text.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type {rope.get('rope_type')!r} is not supported (AF3 uses default RoPE)")
    decoder = replace(config_from_transformers(text), qkv_bias=True)  # Qwen2.5: biased q/k/v
    encoder = EncoderConfig(
        mel_bins=audio.get("num_mel_bins", 128), width=audio.get("hidden_size", 1280),
        layers=audio.get("num_hidden_layers", 32), heads=audio.get("num_attention_heads", 20),
        mlp_hidden=audio.get("intermediate_size", 5120), max_positions=audio.get("max_source_positions", 1500),
    )
    return AF3Config(name, encoder, decoder, data.get("audio_token_id", 151669), data.get("projector_bias", True))


def config_from_files(files: dict[str, dict], name: str) -> AF3Config | None:
    data = files.get("config.json", {})
    if data.get("model_type") != "audioflamingo3":
        return None
    return config_from_dict(data, name)


# ---------------------------------------------------------------------------------------------------------
# Encoder (AF-Whisper) and projector


class EncoderAttention(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.heads, self.head_dim = config.heads, config.head_dim
        self.q = Linear(config.width, config.width)
        self.k = Linear(config.width, config.width, bias=False)
        self.v = Linear(config.width, config.width)
        self.out = Linear(config.width, config.width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, tokens, width = x.shape
        shape = (batch, tokens, self.heads, self.head_dim)
        q = self.q(x) * self.head_dim**-0.5  # scaled before q.k, as the reference
        k, v = self.k(x), self.v(x)
        valid = None if mask is None else mask[:, 0, 0]  # mask [W, 1, 1, T]: the keys to see
        out = attention_on_kernel(q, k, v, self.heads, valid=valid, scale=1.0)  # bf16 on a CPU
        if out is not None:
            return self.out(out)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return self.out(out.transpose(1, 2).reshape(batch, tokens, width))


class EncoderLayer(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.width)
        self.attn = EncoderAttention(config)
        self.mlp_norm = nn.LayerNorm(config.width)
        self.fc1 = Linear(config.width, config.mlp_hidden)
        self.fc2 = Linear(config.mlp_hidden, config.width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask)
        x = x + self.fc2(self.fc1(self.mlp_norm(x), "gelu"))
        if x.dtype == torch.float16:  # the reference's overflow guard
            bound = torch.finfo(x.dtype).max - 1000
            x = x.clamp(-bound, bound)
        return x


class AudioEncoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.conv1 = Conv1d(config.mel_bins, config.width, kernel_size=3, padding=1)
        self.conv2 = Conv1d(config.width, config.width, kernel_size=3, stride=2, padding=1)
        self.positions = nn.Parameter(torch.zeros(config.max_positions, config.width))
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width)

    def forward(self, features: torch.Tensor, frames_mask: torch.Tensor) -> torch.Tensor:
        """features [W, mels, 2 * max_positions], frames_mask [W, frames] -> [W, max_positions / 2, width]."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(features)))).transpose(1, 2)
        if x.shape[1] != self.config.max_positions:
            raise ValueError(f"the encoder takes exactly {2 * self.config.max_positions} mel frames per window")
        x = x + self.positions.to(x.dtype)
        valid = (frames_mask.sum(-1) - 1) // 2 + 1
        keys = torch.arange(x.shape[1], device=x.device)[None, :] < valid[:, None]
        mask = None if bool(keys.all()) else keys[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        x = F.avg_pool1d(x.transpose(1, 2), kernel_size=2, stride=2).transpose(1, 2)
        return self.norm(x)


class Projector(nn.Module):
    def __init__(self, config: AF3Config):
        super().__init__()
        self.fc1 = Linear(config.encoder.width, config.decoder.width, bias=config.projector_bias)
        self.fc2 = Linear(config.decoder.width, config.decoder.width, bias=config.projector_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x, "gelu"))


# ---------------------------------------------------------------------------------------------------------
# Decoder (Qwen2)


# ---------------------------------------------------------------------------------------------------------
# The model


@dataclass
class AF3Output:
    logits: torch.Tensor  # [B, T, vocab]
    loss: torch.Tensor | None = None


class AF3Model(ChatModel):
    def __init__(self, config: AF3Config):
        super().__init__()
        self.config = config
        self.encoder = AudioEncoder(config.encoder)
        self.projector = Projector(config)
        self.decoder = Decoder(config.decoder)
        self.processor = None  # attached by the loader (sensorium.processors.af3); None: no tokenizer

    @property
    def name(self) -> str:
        return self.config.name


    @property
    def context_length(self) -> int:
        """Tokens the decoder reads, prompt (audio tokens included) and answer together."""
        return self.config.decoder.max_positions

    @property
    def device(self) -> torch.device:
        return self.decoder.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.embed.weight.dtype

    def process(self, conversations, output_labels: bool = False, long_audio: str = "error",
                on_truncated: str = "error", sampling_rate: int | None = None) -> AF3Inputs:
        """Conversations -> model inputs (the processor's `__call__`); audio arrays need their rate (the
        item's "sampling_rate", else `sampling_rate`)."""
        return self._processor()(conversations, output_labels=output_labels, long_audio=long_audio,
                                 on_truncated=on_truncated, sampling_rate=sampling_rate)



    def audio_embeddings(self, input_features: torch.Tensor, input_features_mask: torch.Tensor) -> torch.Tensor:
        """Projected audio frames of every window, valid ones only, in order: [sum of tokens, width]."""
        frames = self.encoder(input_features.to(self.device, self.dtype), input_features_mask.to(self.device))
        embeds = self.projector(frames)
        lengths = torch.tensor([audio_token_count(int(n)) for n in input_features_mask.sum(-1)], device=self.device)
        keep = torch.arange(embeds.shape[1], device=self.device)[None, :] < lengths[:, None]
        return embeds[keep]

    def embed(self, input_ids, input_features=None, input_features_mask=None) -> torch.Tensor:
        input_ids = input_ids.to(self.device)
        audio = None if input_features is None else self.audio_embeddings(input_features, input_features_mask)
        return scatter_placeholders(self.decoder.embed(input_ids), input_ids, self.config.audio_token_id, audio, "audio")

    def forward(self, input_ids, attention_mask=None, input_features=None, input_features_mask=None,
                labels=None, position_ids=None) -> AF3Output:
        """Logits for every position (and the next-token loss with `labels`, -100 ignored), as transformers'
        forward: positions 0..T-1 unless given."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "input_features": input_features,
                  "input_features_mask": input_features_mask}
        logits, loss = self.logits_and_loss(inputs, labels, position_ids)
        return AF3Output(logits, loss)


    # --- generation (the shared chat surface: nn/chat.py) ----------------------------------------------------

    def embed_prompt(self, inputs: dict) -> torch.Tensor:
        return self.embed(inputs["input_ids"], inputs.get("input_features"), inputs.get("input_features_mask"))

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_tokens: tuple[int, ...] | None = None,
        pad_id: int | None = None,
        generator: torch.Generator | None = None,
        on_tokens=None,
    ) -> torch.Tensor:
        """New token ids [B, <= max_new_tokens] after left-padded prompts (rows that stopped are padded).

        temperature 0 is greedy; otherwise logits / temperature, then top-k, then top-p (nucleus) filtering, then
        a draw. Positions are those transformers' generate uses (cumulative count of real tokens). The keys and
        values live in one preallocated cache. `on_tokens(step_ids [B])` is called after every step (streaming)."""
        tokens = self.tokens(input_ids, attention_mask, input_features, input_features_mask, max_new_tokens,
                             temperature, top_k, top_p, stop_tokens, pad_id, generator)
        return self._collect(tokens, on_tokens)

    def tokens(self, input_ids, attention_mask=None, input_features=None, input_features_mask=None,
               max_new_tokens=256, temperature=0.0, top_k=None, top_p=None, stop_tokens=None, pad_id=None,
               generator=None):
        """`generate` as a generator: each step's tokens [B] as they are chosen."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "input_features": input_features,
                  "input_features_mask": input_features_mask}
        return self._token_steps(inputs, max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id, generator)

    # --- chat and transcription ---------------------------------------------------------------------------

    def chat(self, conversations, max_new_tokens: int = 512, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, stream: bool = False, seed: int | None = None, on_truncated: str = "error",
             sampling_rate: int | None = None):
        """Answer one conversation (a list of messages, or a string for one user turn) or a batch of them: the
        reply text, or a list of replies. With `stream=True` (one conversation) returns an iterator of text
        pieces as they are produced; joined, they are exactly the reply `stream=False` gives."""
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        inputs = self.process(conversations, on_truncated=on_truncated, sampling_rate=sampling_rate)
        return self._reply(inputs, stream, max_new_tokens, temperature, top_k, top_p, seed)

    def transcribe(self, audio, prompt: str | None = None, chunk_seconds: float = 30.0, max_new_tokens: int = 512,
                   batch_size: int = 4, on_truncated: str = "error", sampling_rate: int | None = None) -> "Transcript":
        """Speech to text for audio of any length (a path, or an array with its `sampling_rate`): cut into
        chunks of at most `chunk_seconds` whose boundaries move to the quietest 20 ms within the 3 s before each
        cut (the processor's `transcription_chunks`), each chunk transcribed (the model's framing sentence
        stripped), joined; per-chunk timestamps in `segments`."""
        processor = self._processor()
        chunks = processor.transcription_chunks(audio, chunk_seconds, prompt, sampling_rate, on_truncated)
        segments = []
        for first in range(0, len(chunks), batch_size):
            batch = chunks[first : first + batch_size]
            replies = self.chat([request for _, _, request in batch], max_new_tokens=max_new_tokens)
            segments += [Segment(start, end, processor.strip_prefix(text)) for (start, end, _), text in zip(batch, replies)]
        return Transcript(" ".join(s.text for s in segments if s.text), segments)


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    text: str


@dataclass(frozen=True)
class Transcript:
    text: str
    segments: list[Segment]


# ---------------------------------------------------------------------------------------------------------
# Checkpoint layout: transformers' save_pretrained (the hub's audio-flamingo-3-hf), sharded safetensors

ENCODER_LAYER: KeyMap = {
    "self_attn_layer_norm.weight": "attn_norm.weight", "self_attn_layer_norm.bias": "attn_norm.bias",
    "self_attn.q_proj.weight": "attn.q.weight", "self_attn.q_proj.bias": "attn.q.bias",
    "self_attn.k_proj.weight": "attn.k.weight",
    "self_attn.v_proj.weight": "attn.v.weight", "self_attn.v_proj.bias": "attn.v.bias",
    "self_attn.out_proj.weight": "attn.out.weight", "self_attn.out_proj.bias": "attn.out.bias",
    "final_layer_norm.weight": "mlp_norm.weight", "final_layer_norm.bias": "mlp_norm.bias",
    "fc1.weight": "fc1.weight", "fc1.bias": "fc1.bias", "fc2.weight": "fc2.weight", "fc2.bias": "fc2.bias",
}
LAYOUTS: dict[str, KeyMap] = {
    "transformers": {
        "audio_tower.conv1.weight": "encoder.conv1.weight", "audio_tower.conv1.bias": "encoder.conv1.bias",
        "audio_tower.conv2.weight": "encoder.conv2.weight", "audio_tower.conv2.bias": "encoder.conv2.bias",
        "audio_tower.embed_positions.weight": "encoder.positions",
        "audio_tower.layer_norm.weight": "encoder.norm.weight", "audio_tower.layer_norm.bias": "encoder.norm.bias",
        "multi_modal_projector.linear_1.weight": "projector.fc1.weight",
        "multi_modal_projector.linear_1.bias": "projector.fc1.bias",
        "multi_modal_projector.linear_2.weight": "projector.fc2.weight",
        "multi_modal_projector.linear_2.bias": "projector.fc2.bias",
    }
    | {f"audio_tower.layers.{{i}}.{k}": f"encoder.layers.{{i}}.{v}" for k, v in ENCODER_LAYER.items()}
    # Qwen2.5: q/k/v biases, an untied head, whatever the size
    | transformers_key_map(DecoderConfig(qkv_bias=True, tie_embeddings=False), "language_model.model.",
                           "language_model.lm_head.weight", "decoder."),
}


def detect_layout(keys: set[str]) -> str:
    if "audio_tower.conv1.weight" in keys and "language_model.model.embed_tokens.weight" in keys:
        return "transformers"
    shown = ", ".join(sorted(keys)[:8])
    raise ValueError(f"not an Audio Flamingo 3 checkpoint in the transformers layout (first keys: {shown})")


def build(config: AF3Config, layout: str) -> AF3Model:
    return AF3Model(config)


FAMILY = Family(
    name="af3",
    config_type=AF3Config,
    layouts=tuple(LAYOUTS),
    detect_layout=detect_layout,
    key_map=lambda layout, config: LAYOUTS[layout],
    build=build,
    config_files=("config.json",),
    config_from_files=config_from_files,
    quantizable=True,
)
