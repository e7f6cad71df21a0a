"""Whisper log-mel features in torch, batched, on any device (Audio Flamingo 3's front end).

The numbers follow transformers' WhisperFeatureExtractor (its torch path, which the AF3 processor uses):
16 kHz audio in 30 s windows of 480,000 samples (zero-padded on the right), a centred STFT (n_fft 400, hop
160, periodic Hann window, reflect padding), the power spectrum without its last frame (3000 frames), 128
Slaney-normalised mel filters on the Slaney mel scale from 0 to 8 kHz, log10 of max(mel, 1e-10), then per
window max(x, max(x) - 8) and (x + 4) / 4.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

SAMPLING_RATE = 16000
N_FFT = 400
HOP = 160
WINDOW_SAMPLES = 30 * SAMPLING_RATE  # 480,000
WINDOW_FRAMES = WINDOW_SAMPLES // HOP  # 3,000


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    mels = 3.0 * hz / 200.0
    log_region = hz >= 1000.0
    mels = np.where(log_region, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) * (27.0 / np.log(6.4)), mels)
    return mels


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    hz = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    return np.where(log_region, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels - 15.0)), hz)


@lru_cache(maxsize=4)
def mel_filters(num_mel_bins: int = 128, sampling_rate: int = SAMPLING_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """[n_fft // 2 + 1, num_mel_bins] float64 triangles, Slaney scale and area normalisation, 0 Hz to Nyquist."""
    bins = n_fft // 2 + 1
    edges_hz = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(0.0), _hz_to_mel_slaney(sampling_rate / 2), num_mel_bins + 2))
    fft_hz = np.linspace(0, sampling_rate // 2, bins)
    widths = np.diff(edges_hz)
    offsets = edges_hz[None, :] - fft_hz[:, None]
    falling = -offsets[:, :-2] / widths[:-1]
    rising = offsets[:, 2:] / widths[1:]
    triangles = np.maximum(0.0, np.minimum(falling, rising))
    return triangles * (2.0 / (edges_hz[2 : num_mel_bins + 2] - edges_hz[:num_mel_bins]))[None, :]


@lru_cache(maxsize=8)
def _constants(num_mel_bins: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    window = torch.hann_window(N_FFT, device=device)
    filters = torch.from_numpy(mel_filters(num_mel_bins)).to(device, torch.float32).T.contiguous()
    return window, filters


def log_mel(windows: torch.Tensor, num_mel_bins: int = 128) -> torch.Tensor:
    """[B, 480000] float32 windows (already zero-padded) -> [B, num_mel_bins, 3000] features."""
    if windows.ndim != 2:
        raise ValueError(f"windows must be [B, samples], got {tuple(windows.shape)}")
    window, filters = _constants(num_mel_bins, windows.device)
    stft = torch.stft(windows.float(), N_FFT, HOP, window=window, return_complex=True)
    power = (stft[..., :-1].abs() ** 2).contiguous()
    log_spec = torch.clamp(filters @ power, min=1e-10).log10()
    peak = log_spec.amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0


def split_windows(signal: torch.Tensor, max_windows: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One 16 kHz signal [n] -> (windows [W, 480000] zero-padded, valid frames per window [W]): the AF3 processor's
    cutting, W = ceil(n / 480000) (at least 1), at most `max_windows` when given (the caller decides what to do
    with longer audio). A window's valid frame count is ceil(samples / 160)."""
    n = signal.shape[-1]
    count = max(1, -(-n // WINDOW_SAMPLES))
    if max_windows is not None:
        count = min(count, max_windows)
    used = signal[: count * WINDOW_SAMPLES]
    windows = signal.new_zeros(count, WINDOW_SAMPLES, dtype=torch.float32)
    windows.view(-1)[: used.shape[-1]] = used
    samples = torch.clamp(torch.tensor(used.shape[-1]) - torch.arange(count) * WINDOW_SAMPLES, 0, WINDOW_SAMPLES)
    return windows, (samples + HOP - 1) // HOP
