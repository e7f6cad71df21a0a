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
    from sensorium.nn.sequence import detect_runs, runs_to_seconds

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

    assert exit_status(main, ["localize", str(media / "speech.wav"), "-m", str(model_dir), "-Q", "x",
                              "--median-filter", "4"]) == 2
    assert exit_status(main, ["localize", str(media / "speech.wav"), "-m", str(AV / "pe_av_tiny" / "original"),
                              "-Q", "x"]) == 2


def exit_status(main, argv) -> int:
    """main's return value, or the status of a usage error argparse raises."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


# ---------------------------------------------------------------------------------------------------------
# Streaming: files go through the codec in chunks as they are decoded, with the whole-signal results


def blocks_of(signal, sizes=(4096, 1000, 7777)):
    """The signal cut into blocks of varying sizes, as a decoder hands them out."""
    start, k = 0, 0
    while start < len(signal):
        yield signal[start : start + sizes[k % len(sizes)]]
        start, k = start + sizes[k % len(sizes)], k + 1


def whole_latents(model, signal):
    """dac_chunked over the whole reflect-padded signal: what frame_logits does with an array."""
    batch = model.preprocess_audio(signal, sampling_rate=48000)
    return model.audio.dac_chunked(batch.input_values.reshape(-1).to(model.dtype))


def test_streaming_codec_is_dac_chunked_rule(model):
    from sensorium.models.pe_audio import CODEC_CHUNK, CODEC_MARGIN, STREAM_CODEC_CHUNK, StreamingCodec

    rng = np.random.default_rng(5)
    signal = (0.1 * rng.standard_normal(35 * 48000 + 777)).astype(np.float32)  # > 32 s: chunked; a part frame
    with torch.inference_mode():
        whole = whole_latents(model, signal)
        same_rule = StreamingCodec(model.audio, CODEC_CHUNK)
        for block in blocks_of(signal):
            same_rule.push(block)
        assert torch.equal(same_rule.finish(), whole)  # the same calls on the same samples: bit for bit

        small = StreamingCodec(model.audio, STREAM_CODEC_CHUNK)
        most_held = 0
        for block in blocks_of(signal):
            small.push(block)
            most_held = max(most_held, small.held_samples)
        latents = small.finish()
    hop = model.config.dac.hop
    assert latents.shape == whole.shape == (-(-len(signal) // hop), model.config.dac.latent_dim)
    assert (latents - whole).abs().max() <= 1e-4 * whole.abs().max()  # chunk edges elsewhere: rounding only
    assert most_held <= (STREAM_CODEC_CHUNK + 2 * CODEC_MARGIN) * hop + 7777  # bounded: about one chunk

    # In float64 the two chunkings agree to the last bits: the margins hold the codec's whole reach (±6 frames).
    import copy

    model64 = copy.deepcopy(model).double()
    with torch.inference_mode():
        whole64 = whole_latents(model64, signal)
        exact = StreamingCodec(model64.audio, STREAM_CODEC_CHUNK)
        for block in blocks_of(signal):
            exact.push(block)
        assert (exact.finish() - whole64).abs().max() <= 1e-12 * whole64.abs().max()


def test_streaming_short_and_tiny_clips(model):
    from sensorium.models.pe_audio import StreamingCodec

    for length in (100, 1919, 1920, 1921, 48000):  # shorter than a hop (zero-padded), edges, one second
        signal = np.random.default_rng(length).standard_normal(length).astype(np.float32) * 0.1
        codec = StreamingCodec(model.audio)
        with torch.inference_mode():
            for block in blocks_of(signal, (333,)):
                codec.push(block)
            assert torch.equal(codec.finish(), whole_latents(model, signal)), length  # one pass, as dac_chunked
    with pytest.raises(ValueError, match="no audio samples"):
        StreamingCodec(model.audio).finish()


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    """7 min 0.016 s of 48 kHz audio: past the encoder's ~400 s limit (two 300 s windows), many codec chunks,
    and a last frame that needs reflect padding."""
    import soundfile

    rate, rng = 48000, np.random.default_rng(11)
    t = np.arange(420 * rate + 777) / rate
    tone = 0.2 * np.sin(2 * np.pi * (300 + 200 * np.sin(2 * np.pi * t / 37)) * t) * (np.sin(2 * np.pi * t / 11) > 0)
    path = tmp_path_factory.mktemp("long") / "long.flac"
    soundfile.write(path, (tone + 0.03 * rng.standard_normal(len(t))).astype(np.float32), rate, subtype="PCM_16")
    return path


QUERIES = ["a man speaking", "rain", "a dog barking"]


@pytest.mark.slow
def test_streamed_file_equals_whole_signal(model, long_file, monkeypatch):
    """sn.localize streams the file; the same file decoded whole and scored as an array gives the same
    logits to float32 rounding (the codec is chunked differently) and the same events."""
    from sensorium.media.audio import load_audio
    from sensorium.tasks.localize import Rules, events_from_logits

    streamed = []  # the latents sn.localize scores (kept to compare, not recomputed: the codec is the cost)
    score = model.logits_from_latents
    monkeypatch.setattr(model, "logits_from_latents", lambda latents, *rest: streamed.append(latents) or score(latents, *rest))
    (row,) = sn.localize(str(long_file), QUERIES, model=model)
    monkeypatch.undo()
    signal = load_audio(long_file, 48000, downmix="ffmpeg")
    assert row.error is None and row.duration == len(signal) / 48000
    with torch.inference_mode():
        whole = whole_latents(model, signal)
        (streamed,) = streamed
        assert streamed.shape == whole.shape == (10501, model.config.dac.latent_dim)
        got = model.logits_from_latents(streamed, QUERIES)
        assert [(e.onset, e.offset, e.label, e.score) for e in row.events] == [
            (e.onset, e.offset, e.label, e.score) for e in events_from_logits(model, got, QUERIES, Rules())]
        # default: windows [0, 7500) and [3001, 10501), overlap averaged; then 100 s windows every 90 s
        for window, hop in [(None, None), (100.0, 90.0)]:
            want = model.logits_from_latents(whole, QUERIES, window, hop)
            got = model.logits_from_latents(streamed, QUERIES, window, hop)
            tol = 1e-4 * want.abs().max()
            assert want.shape == got.shape == (3, 10501) and (got - want).abs().max() <= tol, (window, hop)
            assert_same_events(got, want, tol, Rules(window=window, hop=hop), model)


def assert_same_events(got, want, tol, rules, model):
    """Identical events, unless a frame lies within rounding of the threshold (then the frames off it agree)."""
    from sensorium.tasks.localize import events_from_logits

    edge = torch.logit(torch.tensor(rules.threshold))
    near = (want - edge).abs() <= tol
    if not near.any():
        spans = lambda logits: [(e.onset, e.offset, e.label) for e in events_from_logits(model, logits, QUERIES, rules)]  # noqa: E731
        assert spans(got) == spans(want)
    else:
        assert torch.equal((got > edge)[~near], (want > edge)[~near])


def test_streamed_path_api_equals_array_on_short_clip(model, media, frame_layout_model):
    """model.frame_logits(path) streams; on a clip of one codec pass it equals the array path bit for bit,
    in both checkpoint layouts."""
    from sensorium.media.audio import load_audio

    path = media / "speech.wav"
    signal = load_audio(path, 48000, downmix="ffmpeg")
    with torch.inference_mode():
        for window in (None, 1.0):
            from_file = frame_layout_model.frame_logits(str(path), QUERIES, window=window)
            from_array = frame_layout_model.frame_logits(signal, QUERIES, sampling_rate=48000, window=window)
            assert torch.equal(from_file, from_array)


@pytest.fixture(scope="module", params=["original", "transformers"])
def frame_layout_model(request, tmp_path_factory):
    folder = pe_av_folder(tmp_path_factory.mktemp(f"pe-a-frame-{request.param}"), f"pe_a_frame_tiny/{request.param}")
    return sn.load(folder, device="cpu")


def test_file_failing_mid_stream_is_reported_and_the_run_goes_on(model, media, tmp_path):
    import soundfile

    cut = tmp_path / "cut.wav"
    soundfile.write(cut, (0.1 * np.random.default_rng(2).standard_normal(20 * 48000)).astype(np.float32), 48000,
                    subtype="PCM_16")
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])  # the header still promises 20 s: found after 12 s streamed
    rows = sn.localize([str(cut), str(media / "speech.wav")], ["rain"], model=model)
    assert rows[0].error and "truncated" in rows[0].error and rows[0].duration is None
    assert rows[1].error is None and rows[1].duration == pytest.approx(165048 / 48000)
    with pytest.warns(UserWarning):
        (kept,) = sn.localize(str(cut), ["rain"], model=model, allow_truncated=True)
    assert kept.error is None and kept.duration == pytest.approx(12.0, abs=0.05)


def test_bad_requests_fail_once_and_bad_scores_fail_the_file(model, model_dir, media, tmp_path, monkeypatch, capsys):
    """A window out of range is a usage error before any file is read (not one error per file); Path inputs
    are taken; a query past the text context warns; non-finite scores fail that file, not the run."""
    from sensorium.cli import main

    speech = media / "speech.wav"
    with pytest.raises(ValueError, match="window must be"):
        sn.localize([speech, speech], ["rain"], model=model, window=10_000.0)
    assert main(["localize", str(speech), "-m", str(model_dir), "-Q", "rain", "--window", "10000", "-q"]) == 2
    assert "window must be" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="query .* tokens"):
        sn.localize(speech, ["rain " * 600], model=model)
    score = model.logits_from_latents
    calls = []

    def first_overflows(latents, *rest):
        logits = score(latents, *rest)
        calls.append(1)
        return logits.fill_(float("nan")) if len(calls) == 1 else logits

    monkeypatch.setattr(model, "logits_from_latents", first_overflows)
    other = tmp_path / "other.wav"
    other.write_bytes(speech.read_bytes())
    bad, good = sn.localize([speech, other], ["rain"], model=model)
    assert "not finite" in bad.error and bad.events == []
    assert good.error is None
