"""The DAC-VAE audio codec's encoder (PE-AV, PE-A-Frame): 48 kHz mono -> 128-d latents at 25 Hz.

Snake convolutions with strides 2/8/10/12, the VAE mean as the latent; from perception_models'
`core/audio_visual_encoder` (commit 3e352cc), checked through the PE-AV parity tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from sensorium.keymaps import KeyMap, prefixed
from sensorium.nn.conv import Conv1d

SAMPLING_RATE = 48000


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
        self.conv1 = Conv1d(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake(channels)
        self.conv2 = Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.snake2(self.conv1(self.snake1(x))))
        return x + y if torch.is_grad_enabled() else y.add_(x)


class DownBlock(nn.Module):
    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.units = nn.ModuleList(ResidualUnit(channels, d) for d in (1, 3, 9))
        self.snake = Snake(channels)
        self.down = Conv1d(channels, 2 * channels, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return self.down(self.snake(x))


class DacEncoder(nn.Module):
    """Waveforms [B, 1, N] (N a multiple of the hop) -> VAE means [B, N / hop, latent_dim]."""

    def __init__(self, config: DacConfig):
        super().__init__()
        self.config = config
        self.conv_in = Conv1d(1, config.channels, kernel_size=7, padding=3)
        self.blocks = nn.ModuleList(DownBlock(config.channels * 2**i, s) for i, s in enumerate(config.strides))
        self.snake_out = Snake(config.width)
        self.conv_out = Conv1d(config.width, config.width, kernel_size=3, padding=1)
        self.bottleneck = Conv1d(config.width, config.latent_dim, kernel_size=1)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(waveforms)
        for block in self.blocks:
            x = block(x)
        return self.bottleneck(self.conv_out(self.snake_out(x))).transpose(1, 2)


def dac_config_from_dict(data: dict) -> DacConfig:
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


# ---------------------------------------------------------------------------------------------------------
# Checkpoint layouts. Keys: the file's names ("{i}" is a layer index); values: ours.

def dac_key_map(prefix: str) -> KeyMap:
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
