"""`sensorium localize` and PE-A-Frame's localize: the original span rule, windows, post-processing, CLI."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import sensorium as sn
from helpers import FIXTURES, pe_av_folder

AV = FIXTURES / "pe_av"
REF = load_file(AV / "reference.safetensors")
SPANS = json.loads((AV / "reference.json").read_text())["aframe"]["spans"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return pe_av_folder(tmp_path_factory.mktemp("pe-a-frame-tiny"), "pe_a_frame_tiny/original")


@pytest.fixture(scope="module")
def model(model_dir):
    return sn.load(model_dir, device="cpu")


def single_text():
    return {"input_ids": REF["single.input_ids"], "attention_mask": REF["single.attention_mask"]}


@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_localize_is_the_original_rule(model, threshold):
    clip = REF["single.input_values"][0, 0].numpy()
    spans = model.localize(clip, single_text(), threshold=threshold, sampling_rate=48000)
    assert spans == SPANS["single"][f"threshold_{threshold}"]


def test_window_covering_the_clip_equals_one_pass(model):
    clip = REF["single.input_values"][0, 0].numpy()
    one = model.frame_logits(clip, single_text(), sampling_rate=48000)
    windowed = model.frame_logits(clip, single_text(), sampling_rate=48000, window=10.0)
    assert one.shape == windowed.shape == (1, 75)
    assert (one - windowed).abs().max() <= 1e-4 * one.abs().max()


def test_windows_average_overlaps(model):
    from sensorium.features.windows import window_starts

    assert window_starts(75, 30, 25) == [0, 25, 45]
    assert window_starts(20, 30, 25) == [0]
    assert window_starts(14.0, 5.0, 5.0) == [0.0, 5.0, 9.0]
    with pytest.raises(ValueError):
        window_starts(10, 0, 1)
    clip = REF["single.input_values"][0, 0].numpy()
    logits = model.frame_logits(clip, single_text(), sampling_rate=48000, window=1.2, hop=1.0)
    assert logits.shape == (1, 75) and torch.isfinite(logits).all()
    with torch.no_grad():
        latents = model.audio.dac_chunked(REF["single.input_values"][0, 0])
        text = model.encode_text(single_text())
        def window(start):
            tokens = model.audio(latents[None, start : start + 30], None)
            return ((model.audio_head(tokens[0, 1:]) @ text.T).T * model.logit_scale + model.logit_bias)[0]
        first, second, last = window(0), window(25), window(45)
    assert torch.allclose(logits[0, :25], first[:25], atol=1e-5)
    assert torch.allclose(logits[0, 25:30], (first[25:] + second[:5]) / 2, atol=1e-5)
    assert torch.allclose(logits[0, 55:], last[10:], atol=1e-5)


def test_post_processing():
    from sensorium.models.pe_av import detect_runs, runs_to_seconds

    on, off = 4.0, -4.0
    logits = torch.tensor([on, on, off, on, on, off, off, off, on, off, on, on, on])
    assert detect_runs(logits, 0.3) == [(0, 2), (3, 5), (8, 9), (10, 13)]
    assert detect_runs(logits, 0.3, merge_gap=1) == [(0, 5), (8, 13)]
    assert detect_runs(logits, 0.3, min_frames=2) == [(0, 2), (3, 5), (10, 13)]
    assert detect_runs(logits, 0.3, median_filter=3) == [(0, 5), (9, 13)]  # frame 9: median of on, off, on
    assert runs_to_seconds([(1, 2)], 1920, 48000) == [[0.03999999910593033, 0.07999999821186066]]
    with pytest.raises(ValueError):
        detect_runs(logits, 0.3, median_filter=2)


def test_localize_api_rows(model, media):
    rows = sn.localize([str(media / "speech.wav"), str(media / "dog.mp4"), str(media / "missing.wav")],
                       ["a man speaking", "rain"], model=model)
    speech, dog, missing = rows
    assert speech.error is None and speech.duration == pytest.approx(165048 / 48000)
    assert dog.error and "audio" in dog.error and missing.error
    assert {e.label for e in speech.events} <= {"a man speaking", "rain"}
    assert all(0 <= e.onset < e.offset <= speech.duration + 0.04 and 0.3 < e.score <= 1 for e in speech.events)
    spans = model.localize(str(media / "speech.wav"), ["rain"])
    assert [[e.onset, e.offset] for e in speech.events if e.label == "rain"] == spans[0]


def test_cli_localize(model_dir, media, tmp_path, capsys):
    from sensorium.cli import main

    out = tmp_path / "events.tsv"
    code = main(["localize", str(media / "speech.wav"), str(media / "dog.mp4"), "-m", str(model_dir),
                 "-Q", "a man speaking", "--query", "rain", "-q", "-o", str(out)])
    assert code == 1  # dog.mp4 has no audio: reported and skipped
    assert "dog.mp4" in capsys.readouterr().err
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == ["filename", "onset", "offset", "event_label", "score"]
    assert len(lines) > 1 and all(line.split("\t")[0].endswith("speech.wav") for line in lines[1:])

    code = main(["localize", str(media / "speech.wav"), "-m", str(model_dir), "-Q", "rain", "--median-filter", "5",
                 "--min-duration", "0.2", "-q", "--format", "json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["median_filter_frames"] == 5 and doc["min_duration_s"] == 0.2 and doc["threshold"] == 0.3
    events = doc["results"][0]["events"]
    assert all(e["offset"] - e["onset"] >= 0.2 - 1e-6 for e in events)

    assert main(["localize", str(media / "speech.wav"), "-m", str(model_dir), "-Q", "x", "--median-filter", "4"]) == 2
    assert main(["localize", str(media / "speech.wav"), "-m", str(AV / "pe_av_tiny" / "original"), "-Q", "x"]) == 2
