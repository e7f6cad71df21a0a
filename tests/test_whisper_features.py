"""Whisper log-mel features (Audio Flamingo 3's front end) against transformers' WhisperFeatureExtractor."""

import numpy as np
import pytest
import torch

from sensorium.features import whisper


@pytest.fixture(scope="module")
def extractor():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128, return_attention_mask=True)


def test_mel_filters_equal(extractor):
    assert np.array_equal(whisper.mel_filters(128), extractor.mel_filters)


def reference(extractor, signal):
    """The AF3 processor's cutting (30 s chunks, the last one shorter) through the reference extractor."""
    chunks = [signal[i : i + whisper.WINDOW_SAMPLES] for i in range(0, max(len(signal), 1), whisper.WINDOW_SAMPLES)]
    out = extractor(chunks, sampling_rate=16000, return_tensors="pt", return_attention_mask=True,
                    padding="max_length")
    return out["input_features"], out["attention_mask"].sum(-1)


def synthetic(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t * (1 + 0.1 * np.sin(t))) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.mark.parametrize("name", ["speech.wav", "train.flac", "tone_8k.wav", "silence.wav", "stereo_44k.wav"])
def test_features_on_media(extractor, media, name):
    from sensorium.media.audio import load_audio

    signal = load_audio(media / name, 16000)
    want, frames = reference(extractor, signal)
    windows, valid = whisper.split_windows(torch.from_numpy(signal), 20)
    got = whisper.log_mel(windows)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-5
    assert torch.equal(valid, frames)


def test_45_seconds_two_windows(extractor):
    signal = synthetic(45.0)
    want, frames = reference(extractor, signal)
    windows, valid = whisper.split_windows(torch.from_numpy(signal), 20)
    assert windows.shape == (2, 480000) and valid.tolist() == [3000, 1500]
    assert (whisper.log_mel(windows) - want).abs().max() <= 1e-5
    assert torch.equal(valid, frames)


def test_window_cap_and_token_counts():
    from sensorium.models.af3 import audio_token_count

    windows, valid = whisper.split_windows(torch.zeros(16000 * 660), 20)
    assert windows.shape[0] == 20 and valid.sum().item() == 60000
    # the processor's table (reference dossier): seconds -> tokens
    for seconds, tokens in ((0.5, 12), (1, 25), (10, 250), (30, 750), (45, 1125), (125.3, 3132), (600, 15000)):
        _, valid = whisper.split_windows(torch.zeros(int(seconds * 16000)), 20)
        assert audio_token_count(int(valid.sum())) == tokens, seconds
