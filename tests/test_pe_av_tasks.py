"""PE-AV in `embed` and `classify`: which head serves which input, windows for long media, bad inputs."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sensorium as sn
from helpers import FIXTURES, pe_av_folder

AV = FIXTURES / "pe_av"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return pe_av_folder(tmp_path_factory.mktemp("pe-av-tiny"), "pe_av_tiny/original")


@pytest.fixture(scope="module")
def model(model_dir):
    return sn.load(model_dir, device="cpu")


def unit(x):
    return F.normalize(x.float(), dim=-1)[0].numpy()


def test_heads_by_content(model, media):
    rows = sn.embed([str(media / n) for n in ("speech.wav", "dog.mp4", "train.mp4")], model=model,
                    texts=["a dog barking"])
    text, speech, dog, train = rows
    assert [r.modality for r in rows] == ["text", "audio", "video", "audio_video"]
    with torch.inference_mode():
        np.testing.assert_allclose(text.embedding, unit(model.encode_text(["a dog barking"], head="audio_visual")), atol=1e-6)
        np.testing.assert_allclose(speech.embedding, unit(model.encode_audio(str(media / "speech.wav"))), atol=1e-5)
        np.testing.assert_allclose(dog.embedding, unit(model.encode_video(str(media / "dog.mp4"))), atol=1e-5)
        want = model.encode_audio_video(str(media / "train.mp4"), str(media / "train.mp4"))
    np.testing.assert_allclose(train.embedding, unit(want), atol=1e-5)
    assert train.extra == {"windows": 1, "frames": 337}


def test_long_media_in_windows(model, media):
    """train.mp4 (14.06 s) in 5 s windows every 5 s: [0, 5), [5, 10), and the last aligned to the end."""
    from sensorium.media.audio import load_audio
    from sensorium.tasks.audiovisual import windows_for

    spans = windows_for(674816 / 48000, 5.0, 5.0)
    assert [(round(a, 3), round(b, 3)) for a, b in spans] == [(0.0, 5.0), (5.0, 10.0), (9.059, 14.059)]
    [row] = sn.embed(str(media / "train.mp4"), model=model, modality="audio", window=5.0)
    signal = load_audio(media / "train.mp4", 48000, downmix="ffmpeg")
    with torch.inference_mode():
        parts = [model.encode_audio([signal[int(round(a * 48000)) : int(round(b * 48000))]], sampling_rate=48000)
                 for a, b in spans]
    np.testing.assert_allclose(row.embedding, unit(torch.cat(parts).mean(0, keepdim=True)), atol=1e-5)
    assert row.extra["windows"] == 3 and row.modality == "audio"


def test_sixteen_frames_per_window(model, media, monkeypatch):
    monkeypatch.setattr(model, "config", type(model.config)(**{**model.config.__dict__, "video_frames": 16}))
    [row] = sn.embed(str(media / "dog.mp4"), model=model, modality="video")
    assert row.extra["frames"] == 16


def test_bad_inputs_are_reported(model, media):
    names = ("corrupt.mp4", "empty.wav", "notmedia.mp3", "cat.png", "missing.wav")
    rows = sn.embed([str(media / n) for n in names], model=model)
    assert all(r.error for r in rows), [r.error for r in rows]
    assert "image" in rows[3].error
    [silent] = sn.embed(str(media / "dog.mp4"), model=model, modality="audio")
    assert "audio" in silent.error


def test_zero_shot_audio_classification(model, media):
    rows = sn.classify([str(media / "speech.wav"), str(media / "train.mp4")], ["speech", "a train", "rain"], model=model)
    assert [r.modality for r in rows] == ["audio", "audio_video"]
    [speech] = sn.embed(str(media / "speech.wav"), model=model)
    with torch.inference_mode():
        prompts = [t.format(l) for l in ["speech", "a train", "rain"] for t in ("{}", "the sound of {}.", "a recording of {}.")]
        text = F.normalize(model.encode_text(prompts, head="audio"), dim=-1).view(3, 3, -1).mean(1)
        sims = torch.from_numpy(speech.embedding) @ F.normalize(text, dim=-1).T
    best = int(sims.argmax())
    assert rows[0].labels[0][0] == ["speech", "a train", "rain"][best]
    assert rows[0].labels[0][1] == pytest.approx(float(sims[best]), abs=1e-5)


def test_cli(model_dir, media, tmp_path, capsys):
    from sensorium.cli import main

    out = tmp_path / "e.jsonl"
    code = main(["embed", str(media / "speech.wav"), str(media / "corrupt.mp4"), "-m", str(model_dir), "--text", "rain",
                 "--text-head", "audio", "-q", "-o", str(out)])
    assert code == 1 and "corrupt.mp4" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("modality") for r in rows] == ["text", "audio"] and rows[0]["head"] == "audio_text"
    code = main(["classify", str(media / "speech.wav"), "-m", str(model_dir), "--labels", "speech,rain", "-q",
                 "--format", "json", "--window", "2"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["templates"] == ["{}", "the sound of {}.", "a recording of {}."] and "cosine" in doc["scores"]
    assert doc["windows"].startswith("2 s every 2 s")


def test_an_every_frame_run_is_announced_with_its_frames_and_time(model, media, monkeypatch):
    """Before an every-frame model starts, a warning gives the frame-encoder passes it will make (equal to what the
    run then reports), a measured time per frame and what a -16-frame model would make instead."""
    from sensorium.tasks import audiovisual
    from sensorium.tasks.inputs import MediaItem, modality_of

    monkeypatch.setattr(audiovisual, "ANNOUNCE_FRAMES", 10)
    files = [str(media / n) for n in ("train.mp4", "dog.mp4", "speech.wav", "corrupt.mp4")]
    with pytest.warns(UserWarning, match="reads every video frame") as caught:
        rows = sn.embed(files, model=model, window=5.0)
    done = [r for r in rows if r.error is None and r.modality != "audio"]
    frames = sum(r.extra["frames"] for r in done)
    [message] = [str(w.message) for w in caught if "every video frame" in str(w.message)]
    assert f"2 videos, {frames} passes" in message and "s a frame, measured" in message
    items = [MediaItem(f, modality_of(f)) for f in files]
    cost = audiovisual.frame_cost(model, items, window=5.0)
    assert (cost.videos, cost.frames) == (2, frames) and cost.frames_16 < frames and cost.seconds_per_frame > 0
    # nothing to announce for a -16-frame model
    monkeypatch.setattr(model, "config", type(model.config)(**{**model.config.__dict__, "video_frames": 16}))
    assert audiovisual.frame_cost(model, items) is None


def test_window_frames_are_kept_in_uint8_and_encode_as_the_normalised_frames(model, media):
    """A window's squashed frames stay uint8 (exact: the squash rounds to it) until the frame encoder normalises
    each chunk: the same vectors as the processor's float frames."""
    from sensorium.batches import VideoBatch, normalize_squashed
    from sensorium.tasks.audiovisual import WindowReader
    from sensorium.tasks.inputs import MediaItem

    with WindowReader(model, MediaItem(str(media / "dog.mp4"), "video"), "video") as reader:
        ((_, _, _, video),) = list(reader)
    pixels = video.pixel_values_videos
    assert pixels.dtype == torch.uint8 and pixels.shape[2:] == (3, model.frame_size, model.frame_size)
    processed = model.preprocess_video(str(media / "dog.mp4"))
    assert torch.equal(normalize_squashed(pixels), processed.pixel_values_videos)
    with torch.inference_mode():
        assert torch.equal(model.encode_video(video), model.encode_video(processed))
        assert torch.equal(model.encode_video(video), model.encode_video(VideoBatch(normalize_squashed(pixels),
                                                                                    video.padding_mask_videos)))


def test_a_short_window_repeats_frames_for_a_16_frame_model(tmp_path):
    """16 samples of a 5-frame window repeat frames; each is squashed once and the stack equals the processor's."""
    from helpers import make_video

    from sensorium.features.video_frames import squash_frames
    from sensorium.processors.pe_av import read_squashed_frames
    from sensorium.tasks.audiovisual import WindowReader
    from sensorium.tasks.inputs import MediaItem

    path = tmp_path / "short.mp4"
    make_video(path, num_frames=5, fps=10)

    class SixteenFrames:  # what the reader asks of a -16-frame model
        frame_size, video_frames, sampling_rate = 32, 16, 48000

    with WindowReader(SixteenFrames(), MediaItem(str(path), "video"), "video") as reader:
        ((_, _, _, video),) = list(reader)
    want, _ = read_squashed_frames(path, 16, 32)
    assert video.pixel_values_videos.shape[1] == 16 and len(set(map(bytes, video.pixel_values_videos[0].numpy()))) == 5
    assert torch.equal(squash_frames(video.pixel_values_videos[0].permute(0, 2, 3, 1).numpy(), 32), want)


def test_frames_of_several_files_share_frame_encoder_batches(model, media, tmp_path, monkeypatch):
    """iter_encode batches the frames of consecutive files' windows (FrameBatcher): fewer frame-encoder calls than
    windows, the same vectors as one file at a time, results in input order, a bad file in between reported."""
    from helpers import make_video

    from sensorium.tasks.audiovisual import encode_item, iter_encode
    from sensorium.tasks.inputs import MediaItem

    paths = []
    for n in range(3):
        paths.append(tmp_path / f"clip{n}.mp4")
        make_video(paths[-1], num_frames=5 + n, fps=10)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    items = [MediaItem(str(p), "video") for p in (paths[0], broken, paths[1], paths[2])]
    items.append(MediaItem(str(media / "speech.wav"), "audio"))
    calls = []
    frame_features = model.frame_features
    monkeypatch.setattr(model, "frame_features", lambda video: calls.append(video.pixel_values_videos.shape[1])
                        or frame_features(video))
    results = list(iter_encode(model, items, frames=12))
    assert [r.item.path for r in results] == [i.path for i in items]
    assert results[1].error and "broken.mp4" not in results[1].error and all(r.error is None for r in results[2:])
    assert calls == [5 + 6 + 7]  # the three clips' 18 frames in one call (12 reached at the third clip)
    monkeypatch.setattr(model, "frame_features", frame_features)
    for result, item in zip(results, items):
        if result.error is None:
            alone = encode_item(model, item)
            assert result.modality == alone.modality and result.frames == alone.frames
            np.testing.assert_allclose(result.embedding, alone.embedding, atol=2e-6)


def test_the_frame_encoder_batch_follows_the_device(model, monkeypatch):
    """On a CPU the frame encoder takes 8 frames at a time (bigger batches are slower per frame there), 32 on an
    accelerator; padding frames are not run; the chunked result equals one frame at a time."""
    from sensorium.models import pe_av

    assert pe_av.frame_chunk(torch.device("cpu")) == 8 and pe_av.frame_chunk(torch.device("cuda")) == 32
    size = model.frame_size
    pixels = torch.rand(2, 12, 3, size, size) * 2 - 1
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 9:] = False  # 21 real frames
    encoder, sizes = model.video.frames, []
    monkeypatch.setattr(encoder, "forward", lambda x, forward=encoder.forward: sizes.append(len(x)) or forward(x))
    with torch.inference_mode():
        chunked = model.video.frame_features(pixels, mask)
        monkeypatch.setitem(pe_av.FRAME_CHUNK, "cpu", 1)
        single = model.video.frame_features(pixels, mask)
    assert sizes[:3] == [8, 8, 5] and len(sizes) == 3 + 21
    assert bool((chunked[1, 9:] == 0).all())
    torch.testing.assert_close(chunked, single, atol=2e-6, rtol=0)
