"""Audio Flamingo 3 processor against transformers' AudioFlamingo3Processor on the same checkpoint files."""

import numpy as np
import pytest
import torch

from helpers import make_af3_processor_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_af3_processor_folder(tmp_path_factory.mktemp("af3-processor"))


@pytest.fixture(scope="module")
def reference(folder):
    from transformers import AudioFlamingo3Processor

    return AudioFlamingo3Processor.from_pretrained(folder)


@pytest.fixture(scope="module")
def ours(folder):
    import importlib

    return importlib.import_module("sensorium.processors.af3").AF3Processor(folder)


def synthetic(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 300 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def user(text=None, audio=None, audio_first=False):
    items = []
    if text is not None:
        items.append({"type": "text", "text": text})
    if audio is not None:
        item = {"type": "audio", "audio": audio} | ({} if isinstance(audio, str) else {"sampling_rate": 16000})
        items.insert(0 if audio_first else len(items), item)
    return {"role": "user", "content": items}


CONVERSATIONS = {
    "audio+text": lambda a: [user("What is surprising about the barking?", a)],
    "audio only": lambda a: [user(audio=a)],
    "text only": lambda a: [user("Hello there!")],
    "system + audio first": lambda a: [{"role": "system", "content": "Answer briefly."}, user("What is it?", a, True)],
    "multi-turn": lambda a: [user("What is it?", a), {"role": "assistant", "content": [{"type": "text", "text": "A dog."}]},
                             user("And the music?")],
    "string content": lambda a: [{"role": "user", "content": "plain text turn"}],
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_rendering_equals_reference(reference, ours, name):
    conversation = CONVERSATIONS[name]("x.wav")
    want = reference.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert ours.render(conversation) == want
    assert ours.render(conversation, add_generation_prompt=False) == reference.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=False)


def compare(reference, ours, conversations, audios, **kwargs):
    prompts = [reference.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    want = reference(text=prompts, audio=audios or None, output_labels=True)
    got = ours(conversations, output_labels=True, **kwargs)
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(getattr(got, key), want[key]), key
    if audios:
        assert torch.equal(got.input_features_mask, want["input_features_mask"])
        assert got.input_features.shape == want["input_features"].shape
        assert (got.input_features - want["input_features"]).abs().max() <= 1e-5
    return got


def test_media_batch_left_padded(reference, ours, media):
    from sensorium.media.audio import load_audio

    speech = load_audio(media / "speech.wav", 16000)
    train = load_audio(media / "train.flac", 16000)
    conversations = [[user("Transcribe the input speech.", speech)], [user("What is it?", train)]]
    got = compare(reference, ours, conversations, [speech, train])
    assert got.attention_mask[0, 0] == 0 or got.attention_mask[1, 0] == 0  # left padding
    assert got.audio_tokens == (86, 150)


def test_45_seconds_and_text_only_rows(reference, ours):
    audio = synthetic(45.0)
    got = compare(reference, ours, [[user("What is it?", audio)]], [audio])
    assert got.audio_tokens == (1125,) and got.input_features.shape == (2, 128, 3000)
    compare(reference, ours, [[user("Hello!")], [user("Transcribe the input speech.")]], [])


def test_eleven_minutes(reference, ours):
    audio = synthetic(660.0, seed=1)
    with pytest.raises(ValueError, match="at most 600 s"):
        ours([user("Summarise.", audio)])
    with pytest.warns(UserWarning, match="first 10 minutes"):
        got = compare(reference, ours, [[user("Summarise.", audio)]], [audio], long_audio="truncate")
    assert got.audio_tokens == (15000,) and got.input_features.shape[0] == 20


def test_several_audios_in_one_conversation(ours):
    """transformers allows one audio per sample; here each <sound> gets its own audio and count."""
    got = ours([user("First.", synthetic(1.0)), {"role": "assistant", "content": "ok"}, user("Second.", synthetic(10.0))])
    assert got.audio_tokens == (25, 250) and got.input_features.shape[0] == 2
    assert int((got.input_ids == ours.audio_token_id).sum()) == 275


def test_transcription_request_and_strip_prefix(reference, ours):
    audio = synthetic(2.0)
    want = reference.apply_transcription_request(audio, tokenize=False)
    assert ours.render(ours.transcription_request(audio)) == want[0]
    for text in ('The spoken content of the audio is "hello world".', "The transcription of the audio is 'a b'.",
                 "just words.", "  The content of the input audio is plain  "):
        assert ours.strip_prefix(text) == reference._strip_assistant_prefix_and_quotes(text)


def test_bad_inputs(ours, media):
    from sensorium.errors import MediaError

    with pytest.raises(MediaError):
        ours([user("What?", str(media / "empty.wav"))])
    with pytest.raises(MediaError, match="audio"):
        ours([user("What?", str(media / "dog.mp4"))])
    with pytest.raises(MediaError):
        ours([user("What?", str(media / "corrupt.mp4"))])
    with pytest.raises(ValueError, match="placeholders"):  # a prompt that names audio it does not carry
        ours([user("<sound>What is it?")])
