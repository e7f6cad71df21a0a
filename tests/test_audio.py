"""Audio decoding: exact samples, mono rules, FFmpeg resampling, streaming, arrays, and clear errors."""

import numpy as np
import pytest
import soundfile
import torch

from helpers import FIXTURES
from sensorium.errors import MediaError
from sensorium.media.audio import Resampler, load_audio, resample, stream_audio

MEDIA = FIXTURES / "media"


@pytest.mark.parametrize("name", ["speech.wav", "train.flac", "stereo_44k.wav", "tone_8k.wav", "silence.wav"])
def test_wav_and_flac_equal_soundfile(name):
    expected, rate = soundfile.read(MEDIA / name, dtype="float32", always_2d=True)
    ours = load_audio(MEDIA / name, rate)  # native rate: no resampling
    assert np.array_equal(ours, expected.mean(axis=1, dtype=np.float32))


@pytest.mark.parametrize("name", ["train.flac", "train.mp3", "train.ogg", "train.mp4"])
def test_compressed_and_video_audio_tracks(name):
    audio = load_audio(MEDIA / name, 16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    seconds = 14.056 if name.endswith("mp4") else 6.0
    assert abs(len(audio) / 16000 - seconds) < 0.05
    flac = load_audio(MEDIA / "train.flac", 16000)
    n = min(len(flac), len(audio))
    # lossy codecs of the same 6 s: the same signal up to coding noise
    assert np.corrcoef(flac[:n], audio[:n])[0, 1] > 0.9


def test_downmix_rules():
    stereo, rate = soundfile.read(MEDIA / "stereo_44k.wav", dtype="float32")
    mean = load_audio(MEDIA / "stereo_44k.wav", rate)
    ffmpeg = load_audio(MEDIA / "stereo_44k.wav", rate, downmix="ffmpeg")
    np.testing.assert_array_equal(mean, stereo.mean(axis=1, dtype=np.float32))
    assert len(ffmpeg) == len(mean) and not np.allclose(ffmpeg, mean)
    with pytest.raises(ValueError, match="downmix"):
        load_audio(MEDIA / "stereo_44k.wav", rate, downmix="left")


def test_resampling_lengths_and_content():
    tone = load_audio(MEDIA / "tone_8k.wav", 16000)  # 1 s of 440 Hz at 8 kHz
    assert len(tone) == 16000
    spectrum = np.abs(np.fft.rfft(tone[2000:14000] * np.hanning(12000)))
    assert abs(np.argmax(spectrum) * 16000 / 12000 - 440) < 2
    stereo = load_audio(MEDIA / "stereo_44k.wav", 16000)
    assert len(stereo) == 48000


def test_streaming_equals_whole_and_is_block_invariant():
    whole = load_audio(MEDIA / "train.mp4", 16000)
    blocks = list(stream_audio(MEDIA / "train.mp4", 16000))
    assert len(blocks) > 10 and np.array_equal(np.concatenate(blocks), whole)
    signal = np.random.default_rng(0).standard_normal(48000 * 3).astype(np.float32)
    once = resample(signal, 48000, 16000)
    pieces = Resampler(48000, 16000)
    chunked = np.concatenate([pieces.push(c) for c in np.array_split(signal, 37)] + [pieces.flush()])
    assert np.array_equal(once, chunked) and len(once) == 16000 * 3


def test_arrays_and_tensors():
    stereo, rate = soundfile.read(MEDIA / "stereo_44k.wav", dtype="float32")
    from_array = load_audio(stereo.T, 16000, source_rate=rate)
    from_tensor = load_audio(torch.from_numpy(stereo.T.copy()), 16000, source_rate=rate)
    from_file = load_audio(MEDIA / "stereo_44k.wav", 16000)
    np.testing.assert_allclose(from_array, from_file, atol=1e-6)
    assert np.array_equal(from_array, from_tensor)
    with pytest.raises(MediaError, match="channels"):
        load_audio(stereo, 16000, source_rate=rate)  # [samples, channels]
    with pytest.raises(ValueError, match="sample rate"):
        load_audio(stereo.T, 16000)
    with pytest.raises(MediaError, match="floats"):
        load_audio((stereo.T * 32767).astype(np.int16), 16000, source_rate=rate)
    with pytest.raises(MediaError, match="empty"):
        load_audio(np.zeros(0, np.float32), 16000, source_rate=16000)


def test_silence_and_very_short_clips_are_valid(tmp_path):
    assert not load_audio(MEDIA / "silence.wav", 16000).any()
    short = tmp_path / "click.wav"
    soundfile.write(short, np.array([0.5, -0.5, 0.25], np.float32), 16000)
    assert len(load_audio(short, 16000)) == 3


@pytest.mark.parametrize("name,reason", [
    ("corrupt.mp4", "corrupt.mp4: not a readable media file"),
    ("notmedia.mp3", "notmedia.mp3: not a readable media file"),
    ("empty.wav", "empty.wav: no audio samples"),
    ("dog.mp4", "dog.mp4: no audio stream"),
])
def test_bad_files(name, reason):
    with pytest.raises(MediaError, match=reason):
        load_audio(MEDIA / name, 16000)


@pytest.mark.parametrize("name", ["train.flac", "train.mp3", "speech.wav"])
def test_truncated_files(tmp_path, name):
    data = (MEDIA / name).read_bytes()
    cut = tmp_path / f"cut-{name}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match=f"cut-{name}: (truncated|corrupt)"):
        load_audio(cut, 16000)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(MediaError, match="no such file"):
        load_audio(tmp_path / "nothing.wav", 16000)
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(MediaError, match="empty file"):
        load_audio(tmp_path / "zero.wav", 16000)
