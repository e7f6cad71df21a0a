"""AST: waveforms -> normalised Kaldi fbank features [B, max_length, num_mel_bins], as ASTFeatureExtractor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sensorium.errors import InputError
from sensorium.features.fbank import fixed_length_fbank
from sensorium.media.audio import array_to_mono
from sensorium.models.ast import ASTConfig


class ASTProcessor:
    def __init__(self, config: ASTConfig):
        self.config = config

    def audio(self, waveforms, sampling_rate: int, truncate: bool = False, precision: str = "float64") -> torch.Tensor:
        """Waveforms -> features. The array rule of all of sensorium: one array or tensor is one signal,
        [samples] or [channels, samples] (channels first, averaged); a batch is a list of them. (transformers'
        extractor reads a 2-D array as a batch; here that is a multichannel clip, and [samples, channels] is
        an error.) Clips longer than the model's window raise ValueError unless `truncate=True` (then only the
        first window is kept, as the reference does silently); `sensorium.tag` windows long audio."""
        c = self.config
        if isinstance(waveforms, (torch.Tensor, np.ndarray)):
            waveforms = [waveforms]
        elif not isinstance(waveforms, (list, tuple)):
            raise TypeError(f"waveforms must be an array/tensor or a list of them, got {type(waveforms).__name__}")
        if not waveforms:
            raise InputError("no waveforms given")
        signals = [torch.from_numpy(array_to_mono(w, sampling_rate, c.sampling_rate)) for w in waveforms]
        features, frames = fixed_length_fbank(signals, c.max_length, c.num_mel_bins, c.sampling_rate, precision)
        too_long = [i for i, n in enumerate(frames) if n > c.max_length]
        if too_long and not truncate:
            seconds = len(signals[too_long[0]]) / c.sampling_rate
            raise InputError(
                f"clip {too_long[0]} is {seconds:.2f} s, longer than the {c.window_seconds:.2f} s {c.name} window; "
                "use sensorium.tag (it windows long audio) or pass truncate=True to keep only the start"
            )
        if c.normalize_features:
            features = (features - c.feature_mean) / (2 * c.feature_std)
        return features


def for_model(model, folder: Path | None) -> ASTProcessor:
    return ASTProcessor(model.config)
