"""AST: features against transformers' ASTFeatureExtractor on real media, logits against
ASTForAudioClassification on checkpoints it saved, loaded by hub id through the offline HF cache."""

import pytest
import torch
from transformers import ASTFeatureExtractor

import sensorium as sn
from helpers import FIXTURES
from sensorium.features.fbank import fixed_length_fbank, kaldi_fbank
from sensorium.media.audio import load_audio

MEDIA = FIXTURES / "media"
CLIPS = ["speech.wav", "train.flac", "train.mp3", "train.ogg", "train.mp4", "tone_8k.wav", "stereo_44k.wav",
         "silence.wav"]


@pytest.fixture(scope="module")
def waveforms():
    return {name: load_audio(MEDIA / name, 16000) for name in CLIPS}


@pytest.mark.parametrize("name", CLIPS)
@pytest.mark.parametrize("max_length,mean,std", [(1024, -4.2677393, 4.5689974), (128, -6.845978, 5.5654526)])
def test_features_match_ast_feature_extractor(waveforms, name, max_length, mean, std):
    reference = ASTFeatureExtractor(max_length=max_length, mean=mean, std=std)
    expected = reference(waveforms[name], sampling_rate=16000, return_tensors="pt")["input_values"]
    features, _ = fixed_length_fbank([torch.from_numpy(waveforms[name])], max_length)
    ours = (features - mean) / (2 * std)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
    assert (ours - expected).abs().max() < 1e-6  # float64 frames: equal to float32 rounding


def test_features_batch_invariant_and_padding_rows(waveforms):
    signals = [torch.from_numpy(waveforms[n]) for n in CLIPS]
    batch, counts = fixed_length_fbank(signals, 1024)
    for row, signal in enumerate(signals):
        single, _ = fixed_length_fbank([signal], 1024)
        assert torch.equal(batch[row], single[0])
    speech = CLIPS.index("speech.wav")
    assert counts[speech] == 1 + (len(waveforms["speech.wav"]) - 400) // 160
    assert not batch[speech, counts[speech]:].any()  # zero rows, normalised later as the reference does


def test_float32_mode_is_close(waveforms):
    signal = torch.from_numpy(waveforms["train.flac"])[None]
    exact = kaldi_fbank(signal)
    fast = kaldi_fbank(signal, precision="float32")
    assert (exact - fast).abs().max() < 5e-3
    with pytest.raises(ValueError, match="precision"):
        kaldi_fbank(signal, precision="float16")


def test_short_clip_is_one_padded_frame():
    features, counts = fixed_length_fbank([torch.full((100,), 0.1)], 16)
    assert counts == [1] and features.shape == (1, 16, 128) and not features[0, 1:].any()


REPOS = ["MIT/ast-finetuned-audioset-10-10-0.4593", "MIT/ast-finetuned-speech-commands-v2",
         "MIT/ast-finetuned-audioset-12-12-0.447"]


@pytest.mark.parametrize("repo", REPOS)
def test_logits_match_transformers(ast_models, waveforms, repo):
    reference = ast_models[repo]
    model = sn.load(repo, device="cpu")
    assert model.labels == tuple(reference.config.id2label[i] for i in range(reference.config.num_labels))
    assert model.multi_label == (reference.config.num_labels == 527)
    fe = ASTFeatureExtractor.from_pretrained(sn.loading.resolve(repo).path.parent)
    clips = [waveforms[n][: int(model.window_seconds * 16000)] for n in ("speech.wav", "train.mp4", "tone_8k.wav")]
    expected_features = fe(clips, sampling_rate=16000, return_tensors="pt")["input_values"]
    features = model.features(clips, 16000)
    torch.testing.assert_close(features, expected_features, rtol=0, atol=1e-4)
    with torch.inference_mode():
        expected = reference(expected_features).logits
        logits = model.classify(features)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)
    scores = model.scores(logits)
    if model.multi_label:
        torch.testing.assert_close(scores, torch.sigmoid(expected), rtol=0, atol=1e-5)
    else:
        torch.testing.assert_close(scores.sum(-1), torch.ones(3))


def test_load_by_catalog_name_and_local_folder(ast_models):
    by_name = sn.load("ast-finetuned-speech-commands-v2", device="cpu")
    folder = sn.loading.resolve("MIT/ast-finetuned-speech-commands-v2").path.parent
    by_folder = sn.load(folder, device="cpu")
    assert by_name.labels == by_folder.labels == ("yes", "no", "up", "down", "_silence_")
    assert by_name.config.feature_mean == pytest.approx(-6.845978) and by_name.window_seconds == pytest.approx(1.28)
    assert by_name.layout == "transformers"


def test_long_clip_is_refused_not_truncated(ast_models, waveforms):
    model = sn.load("MIT/ast-finetuned-speech-commands-v2", device="cpu")
    with pytest.raises(ValueError, match="longer than the 1.28 s"):
        model.features(waveforms["speech.wav"], 16000)
    cut = model.features(waveforms["speech.wav"], 16000, truncate=True)
    assert cut.shape == (1, 128, 128)


def test_other_sample_rates_are_resampled(ast_models):
    model = sn.load("MIT/ast-finetuned-audioset-10-10-0.4593", device="cpu")
    at_8k = load_audio(MEDIA / "tone_8k.wav", 8000)
    torch.testing.assert_close(model.features(at_8k, 8000),
                               model.features(load_audio(MEDIA / "tone_8k.wav", 16000), 16000), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_full_size_audioset_model(tmp_path, waveforms):
    """The real AudioSet geometry (768 wide, 12 layers, 1214 tokens, 527 labels) with random weights."""
    from transformers import ASTConfig, ASTForAudioClassification

    torch.manual_seed(0)
    reference = ASTForAudioClassification(ASTConfig(num_labels=527)).eval()
    reference.save_pretrained(tmp_path)
    ASTFeatureExtractor().save_pretrained(tmp_path)
    model = sn.load(tmp_path, device="cpu")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    features = model.features([waveforms["train.mp4"][:160000]], 16000)
    with torch.inference_mode():
        torch.testing.assert_close(model.classify(features), reference(features).logits, rtol=0, atol=1e-4)
