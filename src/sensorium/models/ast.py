"""Audio Spectrogram Transformer (AST): AudioSet and Speech Commands tagging.

Written from transformers 5.23 (`ASTForAudioClassification`, `ASTFeatureExtractor`) and checked against it.
A DeiT-style ViT over a Kaldi log-mel spectrogram [max_length frames x 128 bins]: 16x16 patches with strides
(frequency, time), frequency-major token order, class and distillation tokens, a learned position table,
pre-norm blocks (LayerNorm eps 1e-12 as the converted configs say, exact GELU, biased q/k/v), a final
LayerNorm, the mean of the class and distillation tokens, then LayerNorm + Linear to the labels.

AudioSet is multi-label: scores are sigmoids. Speech Commands is single-label: softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sensorium.nn import TransformerBlock
from sensorium.keymaps import Concat, KeyMap, prefixed
from sensorium.models.family import Family, processor_of
from sensorium.nn.conv import Conv2d
from sensorium.nn.linear import Linear, PackedForInference


@dataclass(frozen=True)
class ASTConfig:
    name: str
    labels: tuple[str, ...]
    multi_label: bool
    hidden_size: int = 768
    layers: int = 12
    heads: int = 12
    intermediate_size: int = 3072
    patch_size: int = 16
    frequency_stride: int = 10
    time_stride: int = 10
    num_mel_bins: int = 128
    max_length: int = 1024  # frames of 10 ms the model sees at once
    layer_norm_eps: float = 1e-12
    # feature extraction (preprocessor_config.json)
    sampling_rate: int = 16000
    feature_mean: float = -4.2677393
    feature_std: float = 4.5689974
    normalize_features: bool = True

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along frequency and time."""
        return (
            (self.num_mel_bins - self.patch_size) // self.frequency_stride + 1,
            (self.max_length - self.patch_size) // self.time_stride + 1,
        )

    @property
    def window_seconds(self) -> float:
        return self.max_length * 0.01

    @classmethod
    def from_files(cls, files: dict[str, dict], name: str) -> "ASTConfig":
        """The config of a transformers-layout checkpoint from its config.json and preprocessor_config.json."""
        data = files["config.json"]
        if data.get("model_type") != "audio-spectrogram-transformer":
            raise ValueError(f"not an AST config (model_type {data.get('model_type')!r})")
        if data.get("hidden_act", "gelu") != "gelu" or not data.get("qkv_bias", True):
            raise ValueError("only AST checkpoints with exact GELU and biased q/k/v exist; this config differs")
        id2label = {int(k): v for k, v in data.get("id2label", {}).items()}
        labels = tuple(id2label[i] for i in range(len(id2label)))
        problem = data.get("problem_type")
        # The MIT AudioSet configs do not set problem_type, yet AudioSet is multi-label (527 classes, trained
        # with BCE; the original AST applies a sigmoid).
        multi_label = problem == "multi_label_classification" or (problem is None and len(labels) == 527)
        pre = files.get("preprocessor_config.json", {})
        for key in ("max_length", "num_mel_bins"):
            if key in pre and key in data and pre[key] != data[key]:
                raise ValueError(f"preprocessor_config.json has {key}={pre[key]} but config.json {data[key]}")
        return cls(
            name=name,
            labels=labels,
            multi_label=multi_label,
            hidden_size=data["hidden_size"],
            layers=data["num_hidden_layers"],
            heads=data["num_attention_heads"],
            intermediate_size=data["intermediate_size"],
            patch_size=data.get("patch_size", 16),
            frequency_stride=data.get("frequency_stride", 10),
            time_stride=data.get("time_stride", 10),
            num_mel_bins=data.get("num_mel_bins", 128),
            max_length=data.get("max_length", 1024),
            layer_norm_eps=data.get("layer_norm_eps", 1e-12),
            sampling_rate=pre.get("sampling_rate", 16000),
            feature_mean=pre.get("mean", -4.2677393),
            feature_std=pre.get("std", 4.5689974),
            normalize_features=pre.get("do_normalize", True),
        )


class AST(PackedForInference):
    compile_methods = ("classify",)  # the methods `load(..., compile=True)` compiles

    def __init__(self, config: ASTConfig):
        super().__init__()
        c = self.config = config
        if not c.labels:
            raise ValueError(f"{c.name}: the config lists no labels")
        width = c.hidden_size
        self.patch_embed = Conv2d(1, width, c.patch_size, stride=(c.frequency_stride, c.time_stride))
        self.cls_token = nn.Parameter(torch.zeros(width))
        self.dist_token = nn.Parameter(torch.zeros(width))
        self.pos_embed = nn.Parameter(torch.zeros(2 + c.grid[0] * c.grid[1], width))
        self.blocks = nn.ModuleList(
            TransformerBlock(width, c.heads, c.intermediate_size, eps=c.layer_norm_eps) for _ in range(c.layers)
        )
        self.norm = nn.LayerNorm(width, eps=c.layer_norm_eps)
        self.head_norm = nn.LayerNorm(width, eps=c.layer_norm_eps)
        self.head = Linear(width, len(c.labels))
        self.processor = None  # attached by the loader (sensorium.processors.ast)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    @property
    def multi_label(self) -> bool:
        return self.config.multi_label

    @property
    def device(self) -> torch.device:
        return self.pos_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pos_embed.dtype

    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def window_seconds(self) -> float:
        """Seconds of audio one forward pass sees (10.24 s for AudioSet, 1.28 s for Speech Commands)."""
        return self.config.window_seconds

    @property
    def max_frames(self) -> int:
        """10 ms fbank frames one forward pass sees (1024 for AudioSet, 128 for Speech Commands)."""
        return self.config.max_length

    def features(self, waveforms, sampling_rate: int, truncate: bool = False, precision: str = "float64") -> torch.Tensor:
        """Waveforms -> normalised Kaldi fbank features [B, max_length, num_mel_bins], as ASTFeatureExtractor
        makes them (the processor's `audio`): one array or tensor is one signal, [samples] or [channels,
        samples]; a batch is a list of them. Clips longer than the model's window raise ValueError unless
        `truncate=True`; for long audio use `sensorium.tag`, which windows."""
        return processor_of(self).audio(waveforms, sampling_rate, truncate, precision)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Normalised features [B, max_length, num_mel_bins] -> logits [B, num_labels]."""
        c = self.config
        if features.ndim != 3 or features.shape[1:] != (c.max_length, c.num_mel_bins):
            raise ValueError(f"features must be [B, {c.max_length}, {c.num_mel_bins}], got {tuple(features.shape)}")
        x = features.to(self.device, self.dtype).unsqueeze(1).transpose(2, 3)  # [B, 1, mel, frames]
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # frequency-major tokens
        prefix = torch.stack([self.cls_token, self.dist_token]).expand(x.shape[0], -1, -1)
        x = torch.cat([prefix, x], dim=1) + self.pos_embed
        for block in self.blocks[:-1]:
            x = block(x)
        # Only the class and distillation tokens are read out, so the last block computes just those two
        # (their attention still spans every token): about 7 % less work for AudioSet, same numbers.
        x = self.norm(self.blocks[-1].forward_prefix(x, 2))
        pooled = (x[:, 0] + x[:, 1]) / 2
        return self.head(self.head_norm(pooled))

    forward = classify

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities: sigmoid per label (multi-label AudioSet) or softmax over labels."""
        return torch.sigmoid(logits.float()) if self.multi_label else F.softmax(logits.float(), dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Checkpoint layouts. transformers writes the legacy ViT names on disk (its conversion_mapping renames them
# to `layers.{i}.attention.q_proj` ... in memory); both spellings are read.

_BLOCK_ON_DISK: KeyMap = {
    "encoder.layer.{i}.layernorm_before.weight": "blocks.{i}.norm1.weight",
    "encoder.layer.{i}.layernorm_before.bias": "blocks.{i}.norm1.bias",
    "encoder.layer.{i}.attention.attention.query.weight": Concat("blocks.{i}.attn.qkv.weight", 0),
    "encoder.layer.{i}.attention.attention.key.weight": Concat("blocks.{i}.attn.qkv.weight", 1),
    "encoder.layer.{i}.attention.attention.value.weight": Concat("blocks.{i}.attn.qkv.weight", 2),
    "encoder.layer.{i}.attention.attention.query.bias": Concat("blocks.{i}.attn.qkv.bias", 0),
    "encoder.layer.{i}.attention.attention.key.bias": Concat("blocks.{i}.attn.qkv.bias", 1),
    "encoder.layer.{i}.attention.attention.value.bias": Concat("blocks.{i}.attn.qkv.bias", 2),
    "encoder.layer.{i}.attention.output.dense.weight": "blocks.{i}.attn.proj.weight",
    "encoder.layer.{i}.attention.output.dense.bias": "blocks.{i}.attn.proj.bias",
    "encoder.layer.{i}.layernorm_after.weight": "blocks.{i}.norm2.weight",
    "encoder.layer.{i}.layernorm_after.bias": "blocks.{i}.norm2.bias",
    "encoder.layer.{i}.intermediate.dense.weight": "blocks.{i}.mlp.fc1.weight",
    "encoder.layer.{i}.intermediate.dense.bias": "blocks.{i}.mlp.fc1.bias",
    "encoder.layer.{i}.output.dense.weight": "blocks.{i}.mlp.fc2.weight",
    "encoder.layer.{i}.output.dense.bias": "blocks.{i}.mlp.fc2.bias",
}

_BLOCK_IN_MEMORY: KeyMap = {
    "layers.{i}.layernorm_before.weight": "blocks.{i}.norm1.weight",
    "layers.{i}.layernorm_before.bias": "blocks.{i}.norm1.bias",
    "layers.{i}.attention.q_proj.weight": Concat("blocks.{i}.attn.qkv.weight", 0),
    "layers.{i}.attention.k_proj.weight": Concat("blocks.{i}.attn.qkv.weight", 1),
    "layers.{i}.attention.v_proj.weight": Concat("blocks.{i}.attn.qkv.weight", 2),
    "layers.{i}.attention.q_proj.bias": Concat("blocks.{i}.attn.qkv.bias", 0),
    "layers.{i}.attention.k_proj.bias": Concat("blocks.{i}.attn.qkv.bias", 1),
    "layers.{i}.attention.v_proj.bias": Concat("blocks.{i}.attn.qkv.bias", 2),
    "layers.{i}.attention.o_proj.weight": "blocks.{i}.attn.proj.weight",
    "layers.{i}.attention.o_proj.bias": "blocks.{i}.attn.proj.bias",
    "layers.{i}.layernorm_after.weight": "blocks.{i}.norm2.weight",
    "layers.{i}.layernorm_after.bias": "blocks.{i}.norm2.bias",
    "layers.{i}.mlp.fc1.weight": "blocks.{i}.mlp.fc1.weight",
    "layers.{i}.mlp.fc1.bias": "blocks.{i}.mlp.fc1.bias",
    "layers.{i}.mlp.fc2.weight": "blocks.{i}.mlp.fc2.weight",
    "layers.{i}.mlp.fc2.bias": "blocks.{i}.mlp.fc2.bias",
}

_COMMON: KeyMap = {
    "audio_spectrogram_transformer.embeddings.cls_token": "cls_token",
    "audio_spectrogram_transformer.embeddings.distillation_token": "dist_token",
    "audio_spectrogram_transformer.embeddings.position_embeddings": "pos_embed",
    "audio_spectrogram_transformer.embeddings.patch_embeddings.projection.weight": "patch_embed.weight",
    "audio_spectrogram_transformer.embeddings.patch_embeddings.projection.bias": "patch_embed.bias",
    "audio_spectrogram_transformer.layernorm.weight": "norm.weight",
    "audio_spectrogram_transformer.layernorm.bias": "norm.bias",
    "classifier.layernorm.weight": "head_norm.weight",
    "classifier.layernorm.bias": "head_norm.bias",
    "classifier.dense.weight": "head.weight",
    "classifier.dense.bias": "head.bias",
}

LAYOUTS: dict[str, KeyMap] = {
    "transformers": _COMMON | prefixed("audio_spectrogram_transformer.", "", _BLOCK_ON_DISK),
    "transformers_modules": _COMMON | prefixed("audio_spectrogram_transformer.", "", _BLOCK_IN_MEMORY),
}


def detect_layout(keys: set[str]) -> str:
    if any(".encoder.layer." in k for k in keys):
        return "transformers"
    if any(k.startswith("audio_spectrogram_transformer.layers.") for k in keys):
        return "transformers_modules"
    shown = ", ".join(sorted(keys)[:8])
    raise ValueError(f"not an AST checkpoint in the transformers layout (first keys: {shown})")


def build(config: ASTConfig, layout: str) -> AST:
    return AST(config)


def config_from_files(files: dict[str, dict], name: str) -> ASTConfig | None:
    """The config of an AST checkpoint, or None when its config.json describes something else."""
    if files.get("config.json", {}).get("model_type") != "audio-spectrogram-transformer":
        return None
    return ASTConfig.from_files(files, name)


FAMILY = Family(
    name="ast",
    config_type=ASTConfig,
    layouts=tuple(LAYOUTS),
    detect_layout=detect_layout,
    key_map=lambda layout, config: LAYOUTS[layout],
    build=build,
    config_files=("config.json", "preprocessor_config.json"),
    config_from_files=config_from_files,
    exportable=True,
)
