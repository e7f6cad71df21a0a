"""Nothing lost: bad destinations, full disks, signals, concurrent runs, bad option values, bad files inside a
batch, long --frames, and the Python API's wrong types. Inputs are generated at test time; runs that need a
process of their own (signals, file-size limits, a second user) go through tests/cli_runner.py."""

import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

import sensorium as sn
from helpers import FIXTURES, make_video
from sensorium.cli import main

MEDIA = FIXTURES / "media"
RUNNER = Path(__file__).parent / "cli_runner.py"
TAGGER = "MIT/ast-finetuned-audioset-10-10-0.4593"


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def as_permissions_apply(command: list[str]) -> list[str]:
    """`command` run so that file permissions bind: as root (CI), without the capabilities that override
    them (setpriv, from util-linux, drops them from the bounding set before exec)."""
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]


def run(args, timeout=120, limit_bytes=None, permissions=False):
    """The command in its own process; `limit_bytes` caps the size of any file it writes (RLIMIT_FSIZE, with
    SIGXFSZ ignored so writes fail with EFBIG as they fail with ENOSPC on a full disk); `permissions` makes
    file permissions bind for root too."""

    def cap():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    command = [sys.executable, str(RUNNER), *map(str, args)]
    return subprocess.run(as_permissions_apply(command) if permissions else command, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=cap if limit_bytes else None)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")
    return folder


@pytest.fixture
def recordings(tmp_path):
    folder = tmp_path / "recordings"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        sf.write(folder / f"r{i}.wav", (0.1 * rng.standard_normal(16000 * 3)).astype(np.float32), 16000)
    return folder


# ---------------------------------------------------------------------------------------------------------
# Destinations


def test_output_naming_an_input_is_refused_and_the_input_kept(tiny_entries, ast_models, tmp_path, capsys):
    image = tmp_path / "cat.png"
    shutil.copy(MEDIA / "cat.png", image)
    before = digest(image)
    assert main(["embed", str(image), "-m", "test-clip_tiny", "-o", str(image), "--format", "jsonl", "-q"]) == 2
    assert "is one of the inputs" in capsys.readouterr().err
    sound = tmp_path / "talk.wav"
    shutil.copy(MEDIA / "speech.wav", sound)
    sound_before = digest(sound)
    assert main(["tag", str(tmp_path), "-m", TAGGER, "-o", str(sound), "--format", "json", "-q"]) == 2
    assert "is one of the inputs" in capsys.readouterr().err
    assert digest(image) == before and digest(sound) == sound_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png", "talk.wav"]  # nothing left beside them


@pytest.mark.parametrize("case", ["missing folder", "folder is a file", "output is a folder", "sidecar is the output"])
def test_bad_destinations_exit_2_before_the_model_loads(tmp_path, capsys, case):
    (tmp_path / "file").write_text("x")
    output, fmt = {
        "missing folder": (tmp_path / "no" / "such" / "out.jsonl", "jsonl"),
        "folder is a file": (tmp_path / "file" / "out.jsonl", "jsonl"),
        "output is a folder": (tmp_path, "jsonl"),
        "sidecar is the output": (tmp_path / "emb.json", "npy"),
    }[case]
    # the model does not exist: only a destination checked first can be the reason given
    code = main(["embed", str(MEDIA / "cat.png"), "-m", "no-such-model", "-o", str(output), "--format", fmt, "-q"])
    err = capsys.readouterr().err
    assert code == 2 and f"-o {output}" in err and "no-such-model" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_read_only_folder_exits_2(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    # the model is never read: the destination is refused first
    result = run(["embed", MEDIA / "cat.png", "-m", "no-such-model", "-o", folder / "out.jsonl", "-q"],
                 permissions=True)
    folder.chmod(0o755)
    assert result.returncode == 2, result.stderr
    assert "cannot write" in result.stderr and "permission denied" in result.stderr
    assert list(folder.iterdir()) == []


FULL_DISK = [("embed", "jsonl"), ("embed", "json"), ("embed", "npy"), ("embed", "parquet"), ("classify", "csv"),
             ("classify", "tsv")]


def test_a_full_disk_mid_run_fails_in_one_line_and_leaves_nothing(tiny_entries, photos, tmp_path):
    """Every format, each in its own process (run side by side) whose files may not grow past 3000 bytes."""

    def cap():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))

    runs = {}
    for command, fmt in FULL_DISK:
        folder = tmp_path / f"{command}-{fmt}"
        folder.mkdir()
        out = folder / f"out.{fmt}"
        out.write_text("an earlier result")  # a failed run must not replace it
        labels = ["--labels", "a,b,c"] if command == "classify" else []
        argv = [sys.executable, str(RUNNER), command, str(photos), "-m", "test-clip_tiny", "-o", str(out),
                "--format", fmt, "-q", "-b", "4", *labels]
        runs[out] = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                     preexec_fn=cap)
    for out, process in runs.items():
        err = process.communicate(timeout=180)[1]
        assert process.returncode == 3, (out.name, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "cannot write" in lines[0] and "file too large" in lines[0], (out.name, err)
        assert out.read_text() == "an earlier result"
        assert [p.name for p in out.parent.iterdir()] == [out.name], out.name  # no .partial, no lock


def test_a_full_standard_output_is_one_line(tiny_entries, photos):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, str(RUNNER), "embed", str(photos), "-m", "test-clip_tiny", "-q"],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 3 and "cannot write standard output: no space left on device" in result.stderr
    assert "Traceback" not in result.stderr


def test_zero_rows_still_give_a_csv_header(tiny_entries, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["classify", str(bad), "--labels", "a,b", "-m", "test-clip_tiny", "--format", "csv", "-q"]) == 1
    assert capsys.readouterr().out == "path,modality,rank,label,score\n"


def test_npy_is_written_at_the_name_given(tiny_entries, tmp_path):
    out = tmp_path / "emb.bin"
    assert main(["embed", str(MEDIA / "cat.png"), "-m", "test-clip_tiny", "-o", str(out), "--format", "npy", "-q"]) == 0
    sidecar = json.loads((tmp_path / "emb.json").read_text())
    assert np.load(out).shape == (1, 32) and sidecar["embeddings"] == "emb.bin" and sidecar["complete"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.bin", "emb.json"]


def test_complete_outputs_say_so(tiny_entries, photos, tmp_path):
    import pyarrow.parquet as pq

    for fmt in ("json", "parquet"):
        out = tmp_path / f"e.{fmt}"
        assert main(["embed", str(photos), "-m", "test-clip_tiny", "-o", str(out), "-q"]) == 0
        if fmt == "json":
            body = json.loads(out.read_text())
            assert body["complete"] is True and body["inputs"] == 24 and body["done"] == 24
        else:
            meta = pq.read_metadata(out).metadata
            assert meta[b"complete"] == b"true" and json.loads(meta[b"sensorium_run"])["done"] == 24
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.lock"))


# ---------------------------------------------------------------------------------------------------------
# Signals and concurrent runs


def _check_output(out: Path, fmt: str, total: int) -> str:
    """'complete' or 'partial' after checking that what is there is valid and says which it is."""
    import pyarrow.parquet as pq

    partial = Path(str(out) + ".partial")
    if fmt in ("jsonl", "tsv", "csv"):
        assert out.exists() != partial.exists(), "exactly one of DEST and DEST.partial"
        lines = (out if out.exists() else partial).read_text().splitlines()
        if fmt == "jsonl":
            assert all(json.loads(line)["embedding"] for line in lines)
        else:
            assert lines and lines[0].split("\t" if fmt == "tsv" else ",")[0] in ("path", "filename")
        return "complete" if out.exists() else "partial"
    assert not partial.exists() and out.exists()
    if fmt == "json":
        body = json.loads(out.read_text())
        assert len(body["results"]) == body["done"]
        record = body
    elif fmt == "npy":
        record = json.loads(out.with_suffix(".json").read_text())
        assert np.load(out).shape == (record["done"], 32) and len(record["rows"]) == record["done"]
    else:
        record = json.loads(pq.read_metadata(out).metadata[b"sensorium_run"])
        assert pq.read_table(out).num_rows == record["done"]
    assert record["inputs"] == total and record["done"] + record["failed"] <= total
    if record["complete"]:
        assert record["done"] + record["failed"] == total and record["interrupted"] is None
        return "complete"
    assert record["interrupted"].startswith(("SIGINT", "SIGTERM", "SIGHUP"))
    return "partial"


def test_signals_at_random_moments_leave_complete_or_marked_outputs(tiny_entries, tmp_path):
    """A long embed run killed with SIGTERM, SIGINT or SIGHUP at random moments: every output format is
    complete or clearly marked partial, and no input is modified."""
    videos = tmp_path / "videos"
    videos.mkdir()
    base = make_video(tmp_path / "base.mp4", num_frames=60, size=(64, 48))
    for i in range(40):
        shutil.copy(base, videos / f"v{i:02d}.mp4")
    before = {p.name: digest(p) for p in videos.iterdir()}
    seed = int(os.environ.get("SENSORIUM_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    outcomes = []
    for round_ in range(6):
        fmt = ("jsonl", "json", "npy", "parquet")[round_ % 4]
        stop = rng.choice([signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
        out = tmp_path / f"out{round_}.{fmt}"
        process = subprocess.Popen([sys.executable, str(RUNNER), "embed", str(videos), "-m", "test-clip_tiny",
                                    "-o", str(out), "-q", "-b", "8", "--workers", "1", "--frames", "16"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_for(Path(str(out) + ".partial"), process)  # the run has started writing
        time.sleep(rng.uniform(0.0, 2.5))
        process.send_signal(stop)
        err = process.communicate(timeout=60)[1]
        outcome = _check_output(out, fmt, 40)
        assert process.returncode == (0 if outcome == "complete" else 128 + stop), (seed, err)
        assert "Traceback" not in err, (seed, err)
        outcomes.append(outcome)
    assert {p.name: digest(p) for p in videos.iterdir()} == before
    assert "partial" in outcomes, f"no run was interrupted (seed {seed}); the runs are too short to test"


def test_a_signal_after_the_output_is_written_does_not_kill_the_finished_run(tiny_entries, tmp_path):
    """The interpreter takes a while to shut down with torch loaded; a Ctrl-C then must not turn a complete
    output into a run that died of SIGINT."""
    out = tmp_path / "out.json"
    process = subprocess.Popen([sys.executable, str(RUNNER), "embed", str(MEDIA / "cat.png"), "-m", "test-clip_tiny",
                                "-o", str(out), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    summary = process.stderr.readline()  # printed after the output is in place
    assert "written to" in summary, summary
    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if process.poll() is None:
            process.send_signal(stop)
    err = summary + process.communicate(timeout=60)[1]
    assert process.returncode == 0, err
    assert json.loads(out.read_text())["complete"] is True


def _wait_for(path: Path, process, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)


def test_kill_9_leaves_the_destination_untouched(tiny_entries, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    base = make_video(tmp_path / "base.mp4", num_frames=60, size=(64, 48))
    for i in range(40):
        shutil.copy(base, videos / f"v{i:02d}.mp4")
    out = tmp_path / "out.jsonl"
    out.write_text("yesterday's results\n")
    process = subprocess.Popen([sys.executable, str(RUNNER), "embed", str(videos), "-m", "test-clip_tiny", "-o", str(out),
                                "-q", "-b", "8", "--frames", "16"], stderr=subprocess.DEVNULL)
    partial = Path(str(out) + ".partial")
    deadline = time.time() + 60
    while time.time() < deadline and not (partial.exists() and partial.stat().st_size > 0):
        time.sleep(0.1)
    process.kill()
    process.wait(timeout=30)
    assert out.read_text() == "yesterday's results\n"
    assert all(json.loads(line)["path"] for line in partial.read_text().splitlines())  # whole rows only


def test_two_runs_cannot_write_one_output(tiny_entries, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    base = make_video(tmp_path / "base.mp4", num_frames=60, size=(64, 48))
    for i in range(150):
        shutil.copy(base, videos / f"v{i:03d}.mp4")
    out = tmp_path / "out.parquet"
    first = subprocess.Popen([sys.executable, str(RUNNER), "embed", str(videos), "-m", "test-clip_tiny", "-o", str(out),
                              "-q", "--frames", "60"], stderr=subprocess.PIPE, text=True)
    partial = Path(str(out) + ".partial")
    deadline = time.time() + 60
    while time.time() < deadline and not partial.exists():
        time.sleep(0.05)
    second = run(["embed", MEDIA / "cat.png", "-m", "test-clip_tiny", "-o", out, "-q"])
    assert second.returncode == 2 and "another sensorium run" in second.stderr, second.stderr
    assert first.poll() is None, "the first run ended before the second was refused: make it longer"
    first.send_signal(signal.SIGTERM)  # the first run is not disturbed by the refusal: it ends as asked
    assert first.wait(timeout=60) == 128 + signal.SIGTERM, first.stderr.read()
    assert _check_output(out, "parquet", 150) == "partial"


# ---------------------------------------------------------------------------------------------------------
# Option values: checked once, before any work, exit 2 naming the option


BAD_OPTIONS = [
    (["tag", "x.wav", "--window", "0"], "--window"),
    (["tag", "x.wav", "--window", "nan"], "--window"),
    (["tag", "x.wav", "--window", "-5"], "--window"),
    (["tag", "x.wav", "--hop", "inf"], "--hop"),
    (["tag", "x.wav", "--threshold", "1.5"], "--threshold"),
    (["tag", "x.wav", "--top-k", "0"], "--top-k"),
    (["transcribe", "x.wav", "--chunk", "0"], "--chunk"),
    (["transcribe", "x.wav", "--chunk", "45"], "--chunk"),
    (["ask", "x.wav", "q", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["ask", "x.wav", "q", "--max-new-tokens", "1e9"], "--max-new-tokens"),
    (["ask", "x.wav", "q", "--temperature", "nan"], "--temperature"),
    (["ask", "x.wav", "q", "--top-p", "0"], "--top-p"),
    (["embed", "x.png", "--frames", "0"], "--frames"),
    (["embed", "x.png", "--batch-size", "-1"], "--batch-size"),
    (["embed", "x.png", "--max-image-pixels", "0"], "--max-image-pixels"),
    (["embed", "x.png", "--max-image-pixels", "-10"], "--max-image-pixels"),
    (["embed", "x.png", "--workers", "-1"], "--workers"),
    (["localize", "x.wav", "-Q", "dog", "--median-filter", "4"], "--median-filter"),
    (["localize", "x.wav", "-Q", "dog", "--merge-gap", "-1"], "--merge-gap"),
]


@pytest.mark.parametrize("argv,option", BAD_OPTIONS, ids=[" ".join(a[2:]) for a, _ in BAD_OPTIONS])
def test_bad_option_values_exit_2_naming_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2 and option in capsys.readouterr().err


@pytest.mark.parametrize("device", ["bogus", "cuda:99" if __import__("torch").cuda.is_available() else "cuda"])
def test_devices_that_do_not_exist_exit_2_before_loading(device, capsys):
    for argv in (["embed", str(MEDIA / "cat.png")], ["tag", str(MEDIA / "speech.wav")],
                 ["transcribe", str(MEDIA / "speech.wav")], ["ask", str(MEDIA / "speech.wav"), "what?"]):
        assert main([*argv, "--device", device, "-m", "no-such-model"]) == 2
        err = capsys.readouterr().err
        assert "--device" in err and "no-such-model" not in err, err


def test_max_new_tokens_beyond_the_context_exit_2(af3_model_dir, capsys):
    assert main(["ask", str(MEDIA / "speech.wav"), "what?", "-m", str(af3_model_dir), "--max-new-tokens",
                 "1000000"]) == 2
    assert "--max-new-tokens 1000000" in capsys.readouterr().err


def test_non_utf8_text_exits_2(tiny_entries, capsys):
    text = os.fsdecode(b"caf\xe9")  # what Python makes of Latin-1 bytes in argv
    with pytest.raises(SystemExit) as stopped:
        main(["embed", "--text", text, "-m", "test-clip_tiny", "-o", "x.parquet"])
    assert stopped.value.code == 2 and "not valid UTF-8 (byte 0xe9" in capsys.readouterr().err


def test_templates_and_label_files_are_checked(tiny_entries, tmp_path, capsys):
    templates = tmp_path / "t.txt"
    templates.write_text("a photo of {label}\n")
    assert main(["classify", str(MEDIA / "cat.png"), "--labels", "a,b", "--templates", str(templates),
                 "-m", "test-clip_tiny"]) == 2
    assert "plain {}, not {label}" in capsys.readouterr().err
    binary = tmp_path / "labels.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert main(["classify", str(MEDIA / "cat.png"), "--labels-file", str(binary), "-m", "test-clip_tiny"]) == 2
    assert f"--labels-file {binary}: not a UTF-8 text file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="replacement fields"):
        sn.classify(str(MEDIA / "cat.png"), ["a", "b"], model="test-clip_tiny", templates=("{} and {}",))


def test_labels_cut_by_the_text_context_warn_and_ties_are_refused(tiny_entries, capsys):
    long = "a photograph of a very small brown and white dog sitting quietly on an old wooden bench " * 2
    with pytest.warns(UserWarning, match="tokens; clip_tiny reads 32, so the rest is cut"):
        rows = sn.classify(str(MEDIA / "cat.png"), ["cat", long], model="test-clip_tiny", templates=("{}",))
    assert rows[0].error is None
    assert main(["classify", str(MEDIA / "cat.png"), "--labels", f"{long} one,{long} two", "--templates", "none",
                 "-m", "test-clip_tiny", "-q"]) == 2
    assert "are the same once cut to 32 tokens" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# Tasks: a bad file in a batch fails alone; long --frames in batches; non-finite inputs


def test_a_bad_file_inside_a_tag_batch_fails_alone(ast_models, tmp_path):
    rng = np.random.default_rng(2)
    good = (0.1 * rng.standard_normal(16000 * 2)).astype(np.float32)
    paths = {}
    for name, samples in {"good1": good, "nan": np.where(np.arange(len(good)) == 9000, np.nan, good),
                          "inf": np.where(np.arange(len(good)) == 100, np.inf, good), "huge": good * 1e30,
                          "good2": good[::-1].copy()}.items():
        paths[name] = tmp_path / f"{name}.wav"
        sf.write(paths[name], samples.astype(np.float32), 16000, subtype="FLOAT")
    model = sn.load(TAGGER, device="cpu")
    rows = sn.tag([str(p) for p in paths.values()], model=model, batch_size=8)
    assert [r.path for r in rows] == [str(p) for p in paths.values()]
    errors = {Path(r.path).stem: r.error for r in rows}
    assert errors["good1"] is None and errors["good2"] is None
    assert "NaN" in errors["nan"] and ("inf" in errors["inf"].lower()) and errors["huge"]
    alone = sn.tag([str(paths["good1"]), str(paths["good2"])], model=model)
    for mixed, single in zip([rows[0], rows[4]], alone):
        np.testing.assert_allclose(mixed.window_scores, single.window_scores, rtol=0, atol=1e-6)
    assert main(["tag", str(tmp_path), "-m", TAGGER, "-q", "-o", str(tmp_path / "tags.json")]) == 1
    body = json.loads((tmp_path / "tags.json").read_text())  # valid JSON: no bare NaN anywhere
    assert {Path(r["path"]).stem for r in body["results"]} == {"good1", "good2"} and body["failed"] == 3


def test_ask_on_nan_audio_is_an_error(af3_model_dir, tmp_path, capsys):
    path = tmp_path / "nan.wav"
    sf.write(path, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    assert main(["ask", str(path), "what is this?", "-m", str(af3_model_dir), "--max-new-tokens", "4"]) == 1
    err = capsys.readouterr().err
    assert "NaN" in err and err.count(str(path)) == 1  # the path is named once


def test_many_frames_go_through_the_model_a_batch_at_a_time(tiny_entries, tmp_path):
    from sensorium.tasks.inputs import MediaItem
    from sensorium.tasks.visual import encode_visual

    video = make_video(tmp_path / "long.mp4", num_frames=50, size=(64, 48))
    model = sn.load("test-clip_tiny", device="cpu")
    calls = []
    original = model.encode_image

    def counting(pixels, normalize=True):
        calls.append(len(pixels))
        return original(pixels, normalize=normalize)

    model.encode_image = counting
    items = [MediaItem(str(video), "video"), MediaItem(str(MEDIA / "cat.png"), "image")]
    streamed = list(encode_visual(model, items, batch_size=8, num_frames=75, workers=1))
    assert max(calls) <= 8 and sum(calls) == 50 + 1  # 75 samples of 50 frames: each frame decoded once
    calls.clear()
    whole = list(encode_visual(model, items, batch_size=200, num_frames=75, workers=1))
    assert calls == [76]  # one batch: every sampled frame, repeats included, and the image
    assert streamed[0].frame_indices == whole[0].frame_indices and len(whole[0].frame_indices) == 75
    np.testing.assert_allclose(streamed[0].embedding, whole[0].embedding, rtol=0, atol=1e-6)
    np.testing.assert_allclose(streamed[1].embedding, whole[1].embedding, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# What a file is comes from its content; what could not be read is named with the true reason


def test_content_decides_image_or_video(tiny_entries, tmp_path):
    shutil.copy(MEDIA / "dog.mp4", tmp_path / "clip.jpg")
    Image.open(MEDIA / "dog_small.png").convert("RGB").save(tmp_path / "photo.mp4", format="JPEG")
    rows = {Path(r.path).name: r for r in sn.embed([str(tmp_path / "clip.jpg"), str(tmp_path / "photo.mp4")],
                                                   model="test-clip_tiny")}
    assert rows["clip.jpg"].error is None and rows["clip.jpg"].modality == "video"
    assert rows["photo.mp4"].error is None and rows["photo.mp4"].modality == "image"


def test_audio_only_mp4_is_embedded_by_its_sound(tmp_path):
    import av

    from helpers import pe_av_folder

    path = tmp_path / "sound.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray((0.1 * np.random.default_rng(3).standard_normal((1, 48000))).astype(
            np.float32), format="fltp", layout="mono")
        frame.sample_rate = 48000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    folder = tmp_path / "model"
    folder.mkdir()
    model = sn.load(pe_av_folder(folder, "pe_av_tiny/transformers"), device="cpu")
    row, = sn.embed(str(path), model=model)
    assert row.error is None and row.modality == "audio"
    row, = sn.embed(str(path), model=model, modality="video")
    assert "no video stream" in row.error


def test_special_files_are_named_with_the_true_reason(tiny_entries, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    rows = {Path(r.path).name: r.error for r in sn.embed([str(fifo), "/dev/zero"], model="test-clip_tiny")}
    assert rows["pipe.png"].startswith("a FIFO") and rows["zero"].startswith("a character device")


def test_unreadable_folders_and_files_are_reported(tmp_path):
    root = tmp_path / "photos"
    (root / "private").mkdir(parents=True)
    for name in ("ok.png", "private/hidden.png", "secret.png"):
        shutil.copy(MEDIA / "dog_small.png", root / name)
    (root / "private").chmod(0o000)
    (root / "secret.png").chmod(0o000)
    script = ("import json, sys\nfrom sensorium.errors import MediaError\nfrom sensorium.tasks.inputs import expand_inputs\n"
              "from sensorium.tasks.visual import decode_visual\nout = {}\n"
              "for i in expand_inputs(sys.argv[1:]):\n"
              "    try:\n        reason = i.error or (decode_visual(i, 32) and None)\n"
              "    except MediaError as err:\n        reason = err.reason\n"
              "    out[i.path.split('/')[-1]] = reason\nprint(json.dumps(out))\n")
    try:
        result = subprocess.run(as_permissions_apply([sys.executable, "-c", script, str(root),
                                                      str(root / "private" / "hidden.png")]),
                                capture_output=True, text=True, timeout=60)
    finally:
        (root / "private").chmod(0o755)
        (root / "secret.png").chmod(0o644)
    assert result.returncode == 0, result.stderr
    reasons = json.loads(result.stdout)
    assert reasons["ok.png"] is None
    assert reasons["private"] == "permission denied: cannot list this folder"
    assert reasons["secret.png"] == "permission denied (the file is not readable)"
    assert reasons["hidden.png"] == "permission denied (a folder on its path cannot be searched)"


def test_duplicate_inputs_are_used_once_with_a_warning(tiny_entries, capsys):
    path = str(MEDIA / "cat.png")
    assert main(["embed", path, path, "-m", "test-clip_tiny", "-q"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and f"warning: {path}: given more than once; used once" in err


def test_jpegs_past_pillows_hard_limit_are_decoded_reduced(tmp_path):
    from sensorium.media.image import open_image

    path = tmp_path / "huge.jpg"
    Image.new("L", (13500, 13500), 128).save(path, quality=50)  # 182 MP, over Pillow's 179 MP refusal
    image = open_image(str(path))
    assert image.size == (6750, 6750)  # 1/2 scale fits the default 89.5 MP
    assert open_image(str(path), max_pixels=200_000_000).size == (13500, 13500)  # the limit can be raised
    with pytest.raises(ValueError, match="max_pixels must be"):
        open_image(str(path), max_pixels=0)


# ---------------------------------------------------------------------------------------------------------
# Python API types


def test_python_api_takes_paths_and_names_wrong_types(tiny_entries):
    model = sn.load("test-clip_tiny", device="cpu")
    row, = sn.embed(MEDIA / "cat.png", model=model)  # a pathlib.Path
    assert row.error is None
    with pytest.raises(TypeError, match="inputs must be a path or a list of paths"):
        sn.embed(42, model=model)
    rows = sn.classify([MEDIA / "cat.png"], "cat,dog", model=model)
    assert {label for label, _ in rows[0].labels} == {"cat", "dog"}
    with pytest.raises(TypeError, match="m.preprocess"):
        model.encode_image(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(TypeError, match="m.tokenize"):
        model.encode_text(["a cat"])


def test_chat_takes_a_string(af3_model_dir):
    model = sn.load(af3_model_dir, device="cpu")
    assert model.chat("hello", max_new_tokens=3) == model.chat([{"role": "user", "content": "hello"}], max_new_tokens=3)
    with pytest.raises(TypeError, match="a conversation is a list of messages"):
        model.chat([["hello"]])


def test_streamed_answers_equal_the_whole_answers(af3_model_dir):
    """Random tiny-model answers end inside multi-byte characters often; the stream must still end the same."""
    model = sn.load(af3_model_dir, device="cpu")
    conversation = [{"role": "user", "content": "What is surprising about the barking?"}]
    cut_inside_a_character = 0
    for seed in range(24):
        options = dict(max_new_tokens=int(3 + seed % 7), temperature=1.5, seed=seed)
        whole = model.chat(conversation, **options)
        assert "".join(model.chat(conversation, stream=True, **options)) == whole, seed
        cut_inside_a_character += whole.endswith("\ufffd")
    assert cut_inside_a_character > 0  # the case the flush is for did occur


def test_transcribe_takes_the_format_from_the_output_name(af3_model_dir, tmp_path):
    out = tmp_path / "talk.vtt"
    assert main(["transcribe", str(MEDIA / "speech.wav"), "-m", str(af3_model_dir), "-o", str(out), "-q",
                 "--max-new-tokens", "4"]) == 0
    assert out.read_text().startswith("WEBVTT")


def test_a_corrupt_exif_warning_names_the_input(tiny_entries, tmp_path, capsys):
    import struct

    # one IFD entry (Make, ASCII, 100 bytes) whose data lies past the end of the EXIF block
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHII", 0x010F, 2, 100, 4000) + b"\0" * 4
    path = tmp_path / "broken_exif.jpg"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(path, exif=b"Exif\x00\x00" + tiff)
    assert main(["embed", str(path), "-m", "test-clip_tiny", "-q"]) == 0
    warnings_shown = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings_shown and all(f"warning: {path}: " in line for line in warnings_shown), warnings_shown


def test_one_array_is_one_signal(ast_models):
    """[channels, samples] is one clip (channels averaged); [samples, channels] is refused; a batch is a list."""
    model = sn.load(TAGGER, device="cpu")
    rng = np.random.default_rng(4)
    stereo = (0.1 * rng.standard_normal((2, 16000))).astype(np.float32)
    assert model.features(stereo, 16000).shape[0] == 1
    np.testing.assert_allclose(model.features(stereo, 16000), model.features(stereo.mean(axis=0), 16000), atol=1e-6)
    with pytest.raises(sn.errors.MediaError, match=r"looks like \[samples, channels\]"):
        model.features(stereo.T.copy(), 16000)  # 1 s of stereo, samples first: an error, not 16000 clips
    assert model.features([stereo[0], stereo[1]], 16000).shape[0] == 2
