"""A bad input fails alone and the run goes on; a bug or an out-of-memory is not a bad input: it stops the run
with its own traceback instead of becoming a "skipped file" row (decoding, scoring, transcribing, the CLI)."""

import importlib

import pytest

import sensorium as sn
from helpers import FIXTURES
from sensorium.errors import InputError, MediaError
from sensorium.tasks.inputs import expand_inputs

MEDIA = FIXTURES / "media"
COMMANDS = "MIT/ast-finetuned-speech-commands-v2"


def _inputs():
    return [str(MEDIA / "speech.wav"), str(MEDIA / "silence.wav")]


def _failing_on_silence(real, error):
    def stream(path, *args, **kwargs):
        if str(path).endswith("silence.wav"):
            raise error
        return real(path, *args, **kwargs)
    return stream


def test_tag_decoding_a_media_error_skips_the_file_a_bug_stops_the_run(ast_models, monkeypatch):
    tag = importlib.import_module("sensorium.tasks.tag")

    model = sn.load(COMMANDS, device="cpu")
    real = tag.stream_audio
    monkeypatch.setattr(tag, "stream_audio", _failing_on_silence(real, MediaError("silence.wav", "cannot decode")))
    rows = list(tag.iter_tag(model, expand_inputs(_inputs(), ("audio",))))
    assert rows[0].error is None and rows[1].error == "cannot decode"

    monkeypatch.setattr(tag, "stream_audio", _failing_on_silence(real, RuntimeError("a decoder bug")))
    with pytest.raises(RuntimeError, match="a decoder bug"):
        list(tag.iter_tag(model, expand_inputs(_inputs(), ("audio",))))


def test_tag_scoring_out_of_memory_propagates(ast_models, monkeypatch):
    tag = importlib.import_module("sensorium.tasks.tag")

    model = sn.load(COMMANDS, device="cpu")

    def out_of_memory(model, batch):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tag, "_score", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        list(tag.iter_tag(model, expand_inputs(_inputs(), ("audio",))))


def test_embed_decoding_bug_propagates(tiny_entries, monkeypatch):
    visual = importlib.import_module("sensorium.tasks.visual")

    real = visual.open_image

    def buggy(path, *args, **kwargs):
        if str(path).endswith("dog_small.png"):
            raise IndexError("a decoder bug")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(visual, "open_image", buggy)
    inputs = [str(MEDIA / "cat.png"), str(MEDIA / "dog_small.png")]
    with pytest.raises(IndexError, match="a decoder bug"):
        sn.embed(inputs, model="test-clip_tiny", device="cpu")
    monkeypatch.setattr(visual, "open_image", real)
    rows = sn.embed([*inputs, str(MEDIA / "corrupt.mp4")], model="test-clip_tiny", device="cpu")
    assert [r.error is None for r in rows] == [True, True, False]


def test_transcribe_input_errors_are_rows_bugs_propagate(af3_model_dir, monkeypatch):
    model = sn.load(str(af3_model_dir), device="cpu")
    speech = str(MEDIA / "speech.wav")

    def refuse(*args, **kwargs):
        raise InputError("this audio cannot be transcribed")

    monkeypatch.setattr(model, "transcribe", refuse)
    assert sn.transcribe([speech], model=model)[0].error == "this audio cannot be transcribed"

    def bug(*args, **kwargs):
        raise ValueError("a shape bug")  # a plain ValueError is ours, not the file's

    monkeypatch.setattr(model, "transcribe", bug)
    with pytest.raises(ValueError, match="a shape bug"):
        sn.transcribe([speech], model=model)


def test_the_command_shows_a_bug_and_keeps_what_was_done(ast_models, monkeypatch, tmp_path, capsys):
    tag = importlib.import_module("sensorium.tasks.tag")
    from sensorium.cli import main

    monkeypatch.setattr(tag, "stream_audio", _failing_on_silence(tag.stream_audio, RuntimeError("a decoder bug")))
    out = tmp_path / "tags.jsonl"
    with pytest.raises(RuntimeError, match="a decoder bug"):
        main(["tag", *_inputs(), "-m", COMMANDS, "-q", "-o", str(out)], restore_signals=False)
    assert "skipped" not in capsys.readouterr().err
    assert (tmp_path / "tags.jsonl.partial").exists() or not out.exists()
