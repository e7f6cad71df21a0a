"""The sensorium command: outputs, formats, bad inputs reported and skipped, exit status."""

import json
import os
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from helpers import FIXTURES, make_video
from sensorium.cli import main
from test_image import _png_header_only

MEDIA = FIXTURES / "media"


@pytest.fixture
def collection(tmp_path):
    """Good and bad inputs side by side."""
    root = tmp_path / "photos"
    (root / "trip").mkdir(parents=True)
    shutil.copy(MEDIA / "cat.png", root / "cat.png")
    shutil.copy(MEDIA / "dog_small.png", root / "trip" / "dog.png")
    shutil.copy(MEDIA / "dog.mp4", root / "trip" / "dog.mp4")
    Image.new("RGB", (1, 1), (10, 200, 30)).save(root / "dot.png")
    (root / "notes.jpg").write_text("a text file with an image name")
    (root / "cut.jpg").write_bytes((MEDIA / "cat.png").read_bytes()[:3000])
    (root / "huge.png").write_bytes(_png_header_only(20_000, 20_000))
    full = make_video(tmp_path / "full.mp4", num_frames=40)
    with av.open(str(full)) as src, av.open(str(root / "trip" / "cut.mp4"), "w",
                                             options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    data = (root / "trip" / "cut.mp4").read_bytes()
    (root / "trip" / "cut.mp4").write_bytes(data[: len(data) // 2])
    empty = av.open(str(root / "trip" / "noframes.mkv"), "w")
    stream = empty.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    empty.start_encoding()
    empty.close()
    odd = os.fsencode(str(root)) + b"/caf\xe9-latin1.png"  # a file name that is not UTF-8
    shutil.copy(MEDIA / "dog_small.png", odd)
    (root / ".hidden.png").write_bytes((MEDIA / "cat.png").read_bytes())
    (root / "readme.txt").write_text("not media")
    return root


GOOD = {"cat.png", "dot.png", "caf\\xe9-latin1.png", "dog.png", "dog.mp4"}
BAD = {"notes.jpg", "cut.jpg", "huge.png", "cut.mp4", "noframes.mkv"}


def _names(paths):
    return {p.replace("\\\\", "\\").split("/")[-1] for p in paths}


def test_embed_reports_skips_and_exits_nonzero(tiny_entries, collection, capsys):
    missing = str(collection / "absent.jpg")
    code = main(["embed", str(collection), missing, "-m", "test-clip_tiny", "-q"])
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    assert _names(r["path"] for r in rows) == GOOD
    for name in BAD | {"absent.jpg"}:
        assert f"{name}: " in err, name
    assert "not an image" in err and "truncated video" in err and "no such file" in err and "limit" in err
    video = [r for r in rows if r["modality"] == "video"][0]
    assert video["frames"] == [0, 21, 42, 63, 85, 106, 127, 149] and len(video["timestamps"]) == 8
    assert all(abs(np.linalg.norm(r["embedding"]) - 1) < 1e-5 and r["model"] == "clip_tiny" for r in rows)
    assert "5 inputs done" in err and "6 failed" in err


def test_embed_all_good_exits_zero_with_text_rows(tiny_entries, tmp_path, capsys):
    code = main(["embed", str(MEDIA / "cat.png"), "--text", "a cat", "--text", "a dog", "-m", "test-clip_tiny", "-q"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [(r["modality"], r.get("text"), r.get("path")) for r in rows] == [
        ("text", "a cat", None), ("text", "a dog", None), ("image", None, str(MEDIA / "cat.png"))]


def test_embed_npy_with_sidecar(tiny_entries, collection, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    code = main(["embed", str(collection), "-m", "test-clip_tiny", "-o", str(out), "-q", "--text", "hello"])
    assert code == 1
    matrix = np.load(out)
    meta = json.loads((tmp_path / "emb.json").read_text())
    assert matrix.shape == (6, 32) and matrix.dtype == np.float32 and meta["shape"] == [6, 32]
    assert meta["model"] == "clip_tiny" and meta["dim"] == 32 and len(meta["rows"]) == 6
    assert meta["rows"][0]["text"] == "hello" and _names(r["path"] for r in meta["rows"][1:]) == GOOD


def test_embed_parquet(tiny_entries, collection, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="parquet output needs the optional pyarrow")
    out = tmp_path / "emb.parquet"
    assert main(["embed", str(collection / "trip"), "-m", "test-clip_tiny", "-o", str(out), "-q"]) == 1
    table = pq.read_table(out)
    assert table.column_names == ["path", "text", "modality", "frames", "timestamps", "embedding"]
    assert table.num_rows == 2 and table.schema.metadata[b"model"] == b"clip_tiny"
    assert len(table.column("embedding")[0]) == 32


def test_embed_json_format(tiny_entries, tmp_path):
    out = tmp_path / "emb.json"
    assert main(["embed", str(MEDIA / "cat.png"), "-m", "test-clip_tiny", "-o", str(out), "-q"]) == 0
    body = json.loads(out.read_text())
    assert body["model"] == "clip_tiny" and len(body["results"]) == 1


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl"])
def test_classify_formats(tiny_entries, collection, tmp_path, capsys, fmt):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n\ntrain\n")
    code = main(["classify", str(collection), "--labels-file", str(labels), "--top-k", "2",
                 "-m", "test-clip_tiny", "--format", fmt, "-q"])
    out, err = capsys.readouterr()
    assert code == 1 and "notes.jpg" in err
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        lines = out.splitlines()
        assert lines[0].split(sep) == ["path", "modality", "rank", "label", "score"]
        assert len(lines) == 1 + 2 * len(GOOD)
    else:
        rows = json.loads(out)["results"] if fmt == "json" else [json.loads(line) for line in out.splitlines()]
        assert _names(r["path"] for r in rows) == GOOD
        for r in rows:
            assert len(r["labels"]) == 2 and r["labels"][0]["score"] >= r["labels"][1]["score"]
            assert {l["label"] for l in r["labels"]} <= {"cat", "dog", "train"}


def test_classify_template_file_and_stdout_default(tiny_entries, tmp_path, capsys):
    templates = tmp_path / "t.txt"
    templates.write_text("a photo of a {}.\na video of a {}.\n")
    code = main(["classify", str(MEDIA / "dog.mp4"), "--labels", "dog,cat", "--templates", str(templates),
                 "-m", "test-clip_tiny", "-q"])
    row = json.loads(capsys.readouterr().out)
    assert code == 0 and row["modality"] == "video"
    assert abs(sum(l["score"] for l in row["labels"]) - 1) < 1e-5


def test_usage_errors_exit_2(tiny_entries, capsys):
    assert main(["classify", str(MEDIA / "cat.png"), "--labels", "a,a", "-m", "test-clip_tiny"]) == 2
    assert "duplicate" in capsys.readouterr().err
    assert main(["embed", str(MEDIA / "cat.png"), "-m", "test-lang_tiny"]) == 2
    assert "feature tower" in capsys.readouterr().err
    assert main(["embed", str(MEDIA / "cat.png"), "-m", "PE-Core-G14-448"]) == 2
    err = capsys.readouterr().err
    assert "facebook/PE-Core-G14-448" in err and "PE-Core-G14-448.pt" in err
    assert main(["embed", str(MEDIA / "cat.png"), "-m", "test-clip_tiny", "-o", "out.npz"]) == 2
    assert main(["embed", "-m", "test-clip_tiny"]) == 2
    with pytest.raises(SystemExit) as info:
        main(["classify", str(MEDIA / "cat.png")])
    assert info.value.code == 2


def test_models_listing(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("PE-Core-T16-384", "PE-Core-G14-448", "PE-Lang-L14-448-Tiling", "PE-Spatial-S16-512"):
        assert name in out
    assert main(["models", "--format", "json", "--task", "classify"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"PE-Core-B16-224", "PE-Core-L14-336"}
    assert all(r["published"][0]["repo"].startswith("facebook/") for r in rows if r["name"].startswith("PE-"))


def test_command_end_to_end_with_full_size_model(full_t16, collection, tmp_path):
    """The installed command, a real catalog name resolved through the offline HF cache."""
    out = tmp_path / "e.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "sensorium.cli", "embed", str(collection / "trip"), str(MEDIA / "cat.png"),
         "--model", "PE-Core-T16-384", "-o", str(out), "--batch-size", "4"],
        capture_output=True, text=True, env=os.environ.copy(), timeout=300,
    )
    assert run.returncode == 1, run.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"].split("/")[-1] for r in rows] == ["dog.mp4", "dog.png", "cat.png"]  # folder sorted, then args
    assert all(len(r["embedding"]) == 512 for r in rows)
    assert "cut.mp4" in run.stderr and "3 inputs done" in run.stderr


def test_max_image_pixels_option(tiny_entries, tmp_path, capsys):
    Image.fromarray(np.full((300, 400, 3), 90, np.uint8)).save(tmp_path / "big.jpg")
    code = main(["embed", str(MEDIA / "cat.png"), str(tmp_path / "big.jpg"), "-m", "test-clip_tiny", "-q",
                 "--max-image-pixels", "20000"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "cat.png: 500x666 image" in err and "exceeds" in err  # WebP: refused
    assert [json.loads(line)["path"] for line in out.splitlines()] == [str(tmp_path / "big.jpg")]  # JPEG: reduced
