"""Tagging audio of any length: windows, pooling, timelines, streaming memory, and the command."""

import json
import tracemalloc
import wave

import numpy as np
import pytest
import torch
from transformers import ASTFeatureExtractor

import sensorium as sn
from helpers import FIXTURES
from sensorium.cli import main
from sensorium.media.audio import load_audio
from sensorium.tasks.inputs import expand_inputs
from sensorium.tasks.tag import TagRow, Windowing, iter_tag, model_windowing, split_windows

MEDIA = FIXTURES / "media"
AUDIOSET = "MIT/ast-finetuned-audioset-10-10-0.4593"
COMMANDS = "MIT/ast-finetuned-speech-commands-v2"


def _windows(lengths, size, hop):
    blocks = [np.arange(n, dtype=np.float32) for n in lengths]
    return [(start, len(w), float(w[0]) if len(w) else None) for start, w in split_windows(iter(blocks), Windowing(size, hop, 1))]


def test_window_layout():
    # regular windows every hop; one more aligned to the end when the last regular one stops short
    assert _windows([7, 9], 10, 4) == [(0, 10, 0.0), (4, 10, 4.0), (6, 10, 6.0)]
    assert _windows([16], 8, 4) == [(0, 8, 0.0), (4, 8, 4.0), (8, 8, 8.0)]  # ends exactly: no extra window
    assert _windows([3, 2], 10, 5) == [(0, 5, 0.0)]  # shorter than a window: the whole clip, padded later
    assert _windows([1] * 25, 10, 10) == [(0, 10, 0.0), (10, 10, 0.0), (15, 10, 0.0)]
    assert _windows([], 10, 5) == []


def test_default_windowing_is_the_model_input(ast_models):
    model = sn.load(AUDIOSET, device="cpu")
    w = model_windowing(model)
    assert (w.size, w.hop) == (1023 * 160 + 400, 512 * 160)  # 1024 frames; hop of 512 frames (5.12 s)
    assert model_windowing(model, window=4.0).hop == 32000
    with pytest.raises(ValueError, match="longer than"):
        model_windowing(model, window=11.0)
    with pytest.raises(ValueError, match="hop"):
        model_windowing(model, window=4.0, hop=5.0)


def test_window_scores_match_transformers(ast_models):
    """Every window's scores equal the reference feature extractor + model on that window's samples."""
    model = sn.load(COMMANDS, device="cpu")
    reference = ast_models[COMMANDS]
    fe = ASTFeatureExtractor(max_length=128, mean=-6.845978, std=5.5654526)
    row = sn.tag(str(MEDIA / "speech.wav"), model=model, top_k=3)[0]
    signal = load_audio(MEDIA / "speech.wav", 16000)
    size = 127 * 160 + 400
    assert row.windows[0] == (0.0, size / 16000) and row.windows[-1][1] == pytest.approx(len(signal) / 16000)
    starts = [round(start * 16000) for start, _ in row.windows]
    windows = [signal[s : s + size] for s in starts]
    with torch.inference_mode():
        expected = torch.softmax(reference(fe(windows, sampling_rate=16000, return_tensors="pt")["input_values"]).logits, -1)
    np.testing.assert_allclose(row.window_scores, expected.numpy(), rtol=0, atol=1e-5)
    clip = expected.max(dim=0).values
    best = clip.argsort(descending=True)[:3]
    assert [label for label, _ in row.labels] == [model.labels[i] for i in best]
    assert row.pooling == "max" and len(row.windows) == len(starts) > 2


def test_mean_pooling_and_threshold(ast_models):
    model = sn.load(COMMANDS, device="cpu")
    row = sn.tag(str(MEDIA / "train.flac"), model=model, pooling="mean", top_k=5)[0]
    mean = row.window_scores.mean(axis=0)
    assert row.labels[0][1] == pytest.approx(float(mean.max()), abs=1e-6)
    cut = float(np.sort(mean)[-2])
    thresholded = sn.tag(str(MEDIA / "train.flac"), model=model, pooling="mean", threshold=cut, top_k=5)[0]
    assert [label for label, _ in thresholded.labels] == [label for label, _ in row.labels[:2]]


def test_timeline_merges_consecutive_windows():
    row = TagRow("x.wav", windows=[(0, 2), (1, 3), (2, 4), (3, 5)],
                 window_scores=np.array([[0.9, 0.1], [0.8, 0.6], [0.2, 0.7], [0.95, 0.1]]))
    events = [(e.onset, e.offset, e.label, e.score) for e in row.events(("dog", "car"), 0.5)]
    assert events == [(0, 3, "dog", 0.9), (1, 4, "car", 0.7), (3, 5, "dog", 0.95)]


def test_failures_keep_order_and_the_run_going(ast_models):
    model = sn.load(AUDIOSET, device="cpu")
    inputs = [str(MEDIA / n) for n in ("speech.wav", "corrupt.mp4", "train.mp4", "dog.mp4", "empty.wav", "notmedia.mp3", "silence.wav")]
    rows = list(iter_tag(model, expand_inputs(inputs, ("audio", "video")), batch_size=3))
    assert [r.path.split("/")[-1] for r in rows] == [i.split("/")[-1] for i in inputs]
    assert [r.error is None for r in rows] == [True, False, True, False, False, False, True]
    assert "no audio stream" in rows[3].error and "no audio samples" in rows[4].error
    assert rows[2].duration == pytest.approx(14.0587, abs=1e-3) and len(rows[2].windows) == 2


def test_long_file_streams_in_bounded_memory(ast_models, tmp_path):
    """25 minutes of audio (96 MB as float32 at 16 kHz) through 1.28 s windows without holding it."""
    path = tmp_path / "long.wav"
    rng = np.random.default_rng(0)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        for _ in range(25):
            out.writeframes((rng.standard_normal(16000 * 60) * 3000).astype(np.int16).tobytes())
    model = sn.load(COMMANDS, device="cpu")
    tracemalloc.start()
    row = sn.tag(str(path), model=model, batch_size=64)[0]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert row.error is None and row.duration == pytest.approx(1500.0)
    assert len(row.windows) == pytest.approx(1500 / 0.64, abs=2)
    assert peak < 40e6, f"peak traced memory {peak / 1e6:.0f} MB"


def test_tag_command(ast_models, tmp_path, capsys):
    inputs = [str(MEDIA / n) for n in ("train.mp4", "speech.wav", "dog.mp4")]
    assert main(["tag", *inputs, "--top-k", "3", "-q"]) == 1
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["path"].split("/")[-1] for r in rows] == ["train.mp4", "speech.wav"]
    assert rows[0]["windows"] == 2 and rows[0]["pooling"] == "max" and rows[0]["window"] == pytest.approx(10.255)
    assert len(rows[0]["labels"]) == 3 and "dog.mp4: no audio stream" in err

    assert main(["tag", str(MEDIA / "train.mp4"), "--timeline", "--threshold", "0.0", "-q", "-m", COMMANDS]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["filename", "onset", "offset", "event_label", "score"]
    assert {line.split("\t")[3] for line in lines[1:]} == {"yes", "no", "up", "down", "_silence_"}

    out = tmp_path / "tags.csv"
    assert main(["tag", str(MEDIA), "-o", str(out), "--window", "1.0", "--hop", "0.5", "-q", "-m", COMMANDS]) == 1
    header, *body = out.read_text().splitlines()
    assert header == "path,duration,rank,label,score,window,hop,pooling"
    assert body and all(line.split(",")[5:] == ["1.0", "0.5", "max"] for line in body)

    assert main(["tag", str(MEDIA / "speech.wav"), "-m", COMMANDS, "--window", "5", "-q"]) == 2
    assert "longer than" in capsys.readouterr().err
