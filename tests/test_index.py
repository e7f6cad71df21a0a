"""Collections on a real LanceDB database on disk: rows per file, incremental runs, search against a brute-force
numpy search over the same vectors, search by example, failed files, the writer lock and the command line."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import sensorium as sn
from helpers import FIXTURES, pe_av_folder

MEDIA = FIXTURES / "media"


@pytest.fixture(scope="module")
def av_dir(tmp_path_factory):
    return pe_av_folder(tmp_path_factory.mktemp("pe-av-tiny"), "pe_av_tiny/original")


@pytest.fixture(scope="module")
def models(tiny_entries, av_dir):
    return {"image": sn.load("test-clip_tiny", device="cpu"), "audio": sn.load(str(av_dir), device="cpu")}


def make_index(path, models):
    return sn.Index(path, image_model=models["image"], audio_model=models["audio"], device="cpu")


@pytest.fixture()
def folder(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    for name in ("cat.png", "dog.mp4", "train.mp4", "speech.wav", "corrupt.mp4", "notmedia.mp3"):
        shutil.copyfile(MEDIA / name, media / name)
    (media / "sub").mkdir()
    shutil.copyfile(MEDIA / "dog_small.png", media / "sub" / "dog_small.png")
    return media


def rows_of(index) -> list[dict]:
    """Every live row, vectors as lists, without the commit token (which differs between runs)."""
    import pyarrow.parquet as pq

    out = index.path + "-rows.parquet"
    index.export(out)
    rows = pq.read_table(out).to_pylist()
    os.remove(out)
    return sorted(rows, key=lambda r: (r["space"], r["path"], r["kind"], r["start"] or 0.0))


def test_rows_per_file_and_file_rows_equal_embed(tmp_path, folder, models):
    index = make_index(tmp_path / "db", models)
    report = index.add(folder)
    assert sorted(os.path.basename(p) for p in report.indexed) == [
        "cat.png", "dog.mp4", "dog_small.png", "speech.wav", "train.mp4"]
    assert sorted(os.path.basename(p) for p in report.failed) == ["corrupt.mp4", "notmedia.mp3"]
    assert all(reason for reason in report.failed.values())
    rows = rows_of(index)
    by = {}
    for row in rows:
        by.setdefault((os.path.basename(row["path"]), row["space"].split(":")[0], row["kind"]), []).append(row)
    # an image: one file row without a span
    (cat,) = by["cat.png", "image", "file"]
    assert cat["start"] is None and cat["end"] is None and cat["modality"] == "image"
    # a video: a file row (8 frames) and 4-second segments at 1 fps, covering the video; sound -> audio_video rows
    dog_segments = by["dog.mp4", "image", "segment"]
    assert [(r["start"], r["end"]) for r in dog_segments][0] == (0.0, 4.0)
    assert dog_segments[-1]["end"] == by["dog.mp4", "image", "file"][0]["end"]
    assert ("dog.mp4", "audio_video", "file") not in by  # dog.mp4 has no sound
    train_windows = by["train.mp4", "audio_video", "window"]
    assert len(train_windows) >= 2 and all(json.loads(r["policy"])["window"] == 10.0 for r in train_windows)
    assert by["speech.wav", "audio", "file"][0]["modality"] == "audio"
    # file rows are what `sensorium embed` gives for the file
    embedded = {os.path.basename(r.path): r.embedding for r in sn.embed(
        [str(folder / n) for n in ("cat.png", "dog.mp4")], model=models["image"])}
    np.testing.assert_allclose(cat["vector"], embedded["cat.png"], atol=1e-6)
    np.testing.assert_allclose(by["dog.mp4", "image", "file"][0]["vector"], embedded["dog.mp4"], atol=1e-6)
    av = {os.path.basename(r.path): r.embedding for r in sn.embed(
        [str(folder / n) for n in ("speech.wav", "train.mp4")], model=models["audio"])}
    np.testing.assert_allclose(by["speech.wav", "audio", "file"][0]["vector"], av["speech.wav"], atol=1e-6)
    np.testing.assert_allclose(by["train.mp4", "audio_video", "file"][0]["vector"], av["train.mp4"], atol=1e-6)
    # the manifest records the failures; status lists them
    status = index.status()
    assert status["files"] == 5 and len(status["failed"]) == 2
    assert {s["space"] for s in status["spaces"]} == {"image:clip_tiny", "audio:" + models["audio"].name,
                                                      "audio_video:" + models["audio"].name}


def test_sound_windows_of_several_files_share_frame_encoder_batches(tmp_path, models, monkeypatch):
    """The index hands audio-visual windows to a FrameBatcher: consecutive videos' windows go through the frame
    encoder together (fewer calls than windows, every frame once), with the rows of one window at a time; an
    every-frame model's cost is announced first."""
    from sensorium.models import pe_av

    media = tmp_path / "media"
    media.mkdir()
    for n in range(3):
        shutil.copyfile(MEDIA / "train.mp4", media / f"train{n}.mp4")
    model = models["audio"]
    frame_features, calls = model.frame_features, []
    monkeypatch.setattr(model, "frame_features", lambda video: calls.append(video.pixel_values_videos.shape[1])
                        or frame_features(video))
    runs = {}
    for name, chunk in (("alone", 1), ("shared", 10**6)):  # the batcher's threshold: 1 frame, or never reached
        monkeypatch.setitem(pe_av.FRAME_CHUNK, "cpu", chunk)
        calls.clear()
        index = make_index(tmp_path / name, models)
        with pytest.warns(UserWarning, match="reads every video frame: 3 videos") as announced:
            assert sorted(os.path.basename(p) for p in index.add(media).indexed) == [f"train{n}.mp4" for n in range(3)]
        runs[name] = ([r for r in rows_of(index) if r["space"].startswith("audio_video")], list(calls))
    (alone, alone_calls), (shared, shared_calls) = runs["alone"], runs["shared"]
    assert len(alone) == len(alone_calls) >= 6  # each window (and file window) of each file, one call each
    # announced before the work, with the passes the run then made (windows and the 30 s file windows)
    assert f"{sum(alone_calls)} passes of its" in str(announced[0].message)
    assert len(shared_calls) < 3 and sum(shared_calls) == sum(alone_calls)
    assert [(r["path"], r["kind"], r["start"]) for r in alone] == [(r["path"], r["kind"], r["start"]) for r in shared]
    for a, b in zip(alone, shared):
        np.testing.assert_allclose(a["vector"], b["vector"], atol=1e-6)


def test_incremental_runs_touch_edit_delete_add(tmp_path, folder, models, monkeypatch):
    index = make_index(tmp_path / "db", models)
    index.add(folder)
    before = rows_of(index)
    # unchanged: nothing is opened (the decoder is never called), nothing changes
    from sensorium.index import pipeline

    def no_decoding(self, work):
        raise AssertionError(f"decoded {work.path}")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline.Pipeline, "units", no_decoding)
        again = index.add(folder)
        assert again.indexed == [] and again.unchanged == 5 and len(again.still_failed) == 2
        # touched: a new mtime, the same bytes -> the hash says unchanged, the manifest follows the mtime
        os.utime(folder / "cat.png", ns=(time.time_ns(), time.time_ns() + 10**9))
        touched = index.add(folder)
        assert touched.touched == 1 and touched.indexed == []
    assert same_rows(rows_of(index), before)
    # edited: its rows are replaced; deleted: removed; added: indexed
    shutil.copyfile(MEDIA / "dog_small.png", folder / "cat.png")
    os.remove(folder / "speech.wav")
    shutil.copyfile(MEDIA / "tone_8k.wav", folder / "sub" / "tone.wav")
    report = index.add(folder)
    assert sorted(os.path.basename(p) for p in report.indexed) == ["cat.png", "tone.wav"]
    assert [os.path.basename(p) for p in report.removed] == ["speech.wav"]
    after = rows_of(index)
    cat = [r for r in after if r["path"].endswith("cat.png")]
    small = [r for r in after if r["path"].endswith("dog_small.png")]
    # the same pixels, embedded in another batch: equal to float32 rounding (oneDNN's blocking follows the batch)
    assert len(cat) == 1 and np.allclose(cat[0]["vector"], small[0]["vector"], rtol=0, atol=1e-6)
    assert not any(r["path"].endswith("speech.wav") for r in after)
    assert any(r["path"].endswith("tone.wav") for r in after)
    # a fresh collection built from the final folder holds the same rows
    assert same_rows(after, rows_of(_fresh(tmp_path / "fresh", folder, models)))


def same_rows(got: list[dict], want: list[dict]) -> bool:
    """The same rows: every field equal, vectors within float32 rounding (frames of different files share
    forward passes, so a resumed or incremental run batches them differently from a run in one go)."""
    if len(got) != len(want):
        return False
    for a, b in zip(got, want):
        if {k: v for k, v in a.items() if k != "vector"} != {k: v for k, v in b.items() if k != "vector"}:
            return False
        if not np.allclose(a["vector"], b["vector"], atol=1e-6, rtol=0):
            return False
    return True


def _fresh(path, folder, models):
    index = make_index(path, models)
    index.add(folder)
    return index


def test_changed_options_index_a_file_again(tmp_path, folder, models):
    index = make_index(tmp_path / "db", models)
    index.add(folder / "dog.mp4")
    assert index.add(folder / "dog.mp4").unchanged == 1
    report = index.add(folder / "dog.mp4", segment=2.0)
    assert len(report.indexed) == 1
    segments = [r for r in rows_of(index) if r["kind"] == "segment"]
    assert [(r["start"], r["end"]) for r in segments][:2] == [(0.0, 2.0), (2.0, 4.0)]


def test_failed_files_are_retried_on_request(tmp_path, folder, models):
    index = make_index(tmp_path / "db", models)
    index.add(folder)
    assert len(index.add(folder).still_failed) == 2
    retried = index.add(folder, retry_failed=True)
    assert sorted(os.path.basename(p) for p in retried.failed) == ["corrupt.mp4", "notmedia.mp3"]


def brute_force(index, query_vectors: dict[str, np.ndarray], top_k: int, modality=None):
    """The documented rule, from the exported rows: per space cosine -> z-score over the space's rows; a file
    ranks by its best row."""
    rows = rows_of(index)
    best: dict[str, float] = {}
    for space, query in query_vectors.items():
        mine = [r for r in rows if r["space"] == space]
        if not mine:
            continue
        cos = np.array([r["vector"] for r in mine], dtype=np.float32) @ query
        z = (cos - cos.mean()) / cos.std() if cos.std() > 1e-12 and len(cos) > 1 else cos
        for r, score in zip(mine, z):
            if modality is None or r["modality"] == modality:
                best[r["path"]] = max(best.get(r["path"], -np.inf), float(score))
    return [p for p, _ in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))][:top_k]


def test_text_search_equals_brute_force(tmp_path, folder, models):
    from sensorium.index.spaces import embed_query_texts

    index = make_index(tmp_path / "db", models)
    index.add(folder)
    spaces = {s.name: s for s in index.spaces()}
    for text in ("a cat on a sofa", "a train passing by", "someone speaking"):
        queries = {}
        for name, space in spaces.items():
            model = models["image"] if space.role == "image" else models["audio"]
            queries[name] = embed_query_texts(model, space, [text])[0]
        for modality in (None, "video"):
            hits = index.search(text, modality=modality, top_k=4)
            assert [h.path for h in hits] == brute_force(index, queries, 4, modality)
            assert all(modality is None or h.modality == modality for h in hits)
    one = index.search("a cat", space="image", top_k=10)
    assert {h.space for h in one} == {"image:clip_tiny"}
    with pytest.raises(ValueError, match="no space 'nope'"):
        index.search("a cat", space="nope")


def test_search_by_example_finds_the_example_first(tmp_path, folder, models):
    index = make_index(tmp_path / "db", models)
    index.add(folder)
    assert index.search(like=folder / "cat.png", top_k=1)[0].path == str(folder / "cat.png")
    hits = index.search(like=folder / "speech.wav", top_k=3)
    assert hits[0].path == str(folder / "speech.wav") and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(h.modality == "audio" for h in hits)  # a sound finds sounds
    video = index.search(like=folder / "train.mp4", top_k=2, segments=True)
    assert video[0].path == str(folder / "train.mp4") and len(video[0].spans) > 1
    with pytest.raises(sn.MediaError, match="corrupt.mp4"):
        index.search(like=folder / "corrupt.mp4")


def test_a_second_writer_is_refused_or_waits(tmp_path, models):
    from sensorium.index import IndexBusyError

    db = tmp_path / "db"
    # the holder keeps the lock until told to let go (or 60 s pass), so a refusal that came only after waiting for
    # the lock would come after that, not within this test's bound, whatever the machine's load
    holder = subprocess.Popen([sys.executable, "-c", (
        "import select, sys; from sensorium.index.store import Store\n"
        f"with Store({str(db)!r}).lock():\n    print('held', flush=True); select.select([sys.stdin], [], [], 60)\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        index = make_index(db, models)
        started = time.monotonic()
        with pytest.raises(IndexBusyError, match="another indexer is writing to this collection"):
            index.add(MEDIA / "cat.png")
        assert time.monotonic() - started < 30 and holder.poll() is None  # refused while the lock is still held
        release = threading.Timer(1.0, lambda: (holder.stdin.write("go\n"), holder.stdin.flush()))
        release.start()
        started = time.monotonic()
        report = index.add(MEDIA / "cat.png", wait=30)  # waits for the holder to let go
        assert len(report.indexed) == 1 and time.monotonic() - started >= 0.9
        release.join()
    finally:
        holder.kill()
        holder.wait()


def test_command_line_index_status_search_export(tmp_path, folder, av_dir, capsys):
    from sensorium.cli import main

    db = str(tmp_path / "db")
    common = ["--db", db, "--device", "cpu"]
    assert main(["index", str(folder), "--image-model", "test-clip_tiny", "--audio-model", str(av_dir), "-q",
                 *common]) == 1  # two bad files
    err = capsys.readouterr().err
    assert "failed" in err and "corrupt.mp4" in err and "5 indexed" in err
    assert main(["index", "--status", "--db", db]) == 0
    assert "5 files indexed, 2 failed" in capsys.readouterr().out
    assert main(["search", "a cat", "--format", "jsonl", "-k", "3", *common]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 3 and set(hits[0]) >= {"path", "file_id", "modality", "start", "end", "space", "score"}
    assert main(["search", "--like", str(folder / "cat.png"), "-k", "1", *common]) == 0
    assert str(folder / "cat.png") in capsys.readouterr().out
    out = tmp_path / "rows.parquet"
    assert main(["index", "--export", str(out), "--db", db]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert {"path", "file_id", "modality", "start", "end", "space", "vector"} <= set(table.column_names)
    assert table.num_rows == sum(s["rows"] for s in sn.Index(db).status()["spaces"])
    assert main(["search", *common]) == 2
    assert main(["index", str(folder / "dog.mp4"), "--remove", "--db", db]) == 0
    assert all(not r.path.endswith("dog.mp4") for r in sn.Index(db).files())


def test_an_unchanged_run_does_not_load_the_models(tmp_path, folder, tiny_entries, av_dir, monkeypatch, capsys):
    import sensorium.loading
    from sensorium.cli import main

    weights = shutil.copytree(av_dir, tmp_path / "av")
    db = str(tmp_path / "db")
    args = ["index", str(folder), "--image-model", "test-clip_tiny", "--audio-model", str(weights), "-q", "--db", db,
            "--device", "cpu"]
    assert main(args) == 1  # two bad files
    spaces = {s.table for s in sn.Index(db).spaces()}
    loaded, real = [], sensorium.loading.load
    monkeypatch.setattr(sensorium.loading, "load", lambda source, **kw: loaded.append(str(source)) or real(source, **kw))
    assert main(args) == 0  # the bad files are unchanged: reported, not failed again
    assert loaded == [] and "unchanged" in capsys.readouterr().err
    shutil.copyfile(MEDIA / "cat.png", folder / "cat2.png")  # a new picture: the image model, not the sound one
    assert main(args) == 0
    assert loaded == ["test-clip_tiny"]
    for f in weights.iterdir():  # the sound model's files rewritten (same content): loaded again, same spaces
        os.utime(f, ns=(time.time_ns(), time.time_ns()))
    shutil.copyfile(MEDIA / "speech.wav", folder / "speech2.wav")
    assert main(args) == 0
    assert loaded[1:] == [str(weights)]
    assert {s.table for s in sn.Index(db).spaces()} == spaces
    assert main(["search", "--like", str(folder / "speech.wav"), "-k", "2", "--db", db, "--device", "cpu"]) == 0
    assert "speech2.wav" in capsys.readouterr().out


RUNNER = FIXTURES.parent / "cli_runner.py"


def _collection_folder(folder):
    """28 small files of every kind: 24 distinct pictures, 2 sounds, 2 videos."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        size = (int(rng.integers(24, 64)), int(rng.integers(24, 64)))
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")
    shutil.copyfile(MEDIA / "speech.wav", folder / "speech.wav")
    shutil.copyfile(MEDIA / "tone_8k.wav", folder / "tone.wav")
    shutil.copyfile(MEDIA / "dog.mp4", folder / "dog.mp4")
    shutil.copyfile(MEDIA / "dog.mp4", folder / "dog2.mp4")
    return folder


def _consistent(db):
    """Every file the manifest calls indexed has exactly its rows, and no other rows are visible."""
    index = sn.Index(db)
    live = {r.commit for r in index.files() if r.status == "indexed"}
    records = {r.file_id: r for r in index.files() if r.status == "indexed"}
    for space in index.spaces():
        rows = index._searcher.rows(space, live)
        counts = {}
        for file_id in (rows.meta["file_id"] if rows else []):
            counts[file_id] = counts.get(file_id, 0) + 1
        expected = {f: r.rows[space.name] for f, r in records.items() if r.rows.get(space.name)}
        assert counts == expected, space.name


def test_a_table_begun_by_a_killed_process_is_made_again(tmp_path, models):
    """A process killed while it created a table leaves the table's folder with a transaction and no version: lancedb
    lists it and cannot open it (a CI run's random kill hit this; every later run then failed with "Table 'spaces'
    was not found"). Readers see no such table, the next writer makes it again."""
    import lancedb
    import pyarrow as pa

    from sensorium.index.store import FILES, SPACES

    db = tmp_path / "db"
    raw = lancedb.connect(str(db))
    for name in (FILES, SPACES):  # each begun, never committed: as the killed run left spaces.lance
        raw.create_table(name, schema=pa.schema([("a", pa.int64())]))
        shutil.rmtree(db / f"{name}.lance" / "_versions")
        shutil.rmtree(db / f"{name}.lance" / "data", ignore_errors=True)
    with pytest.raises(ValueError, match="was not found"):
        lancedb.connect(str(db)).open_table(SPACES)
    assert sn.Index(db).spaces() == [] and sn.Index(db).files() == []
    index = make_index(db, models)
    report = index.add(MEDIA / "cat.png")
    assert len(report.indexed) == 1
    again = sn.Index(db)
    assert [r.path for r in again.files()] == [str(MEDIA / "cat.png")] and again.spaces()
    assert again.search(like=MEDIA / "cat.png", top_k=1)[0].path == str(MEDIA / "cat.png")


def test_killed_at_random_moments_then_resumed_equals_an_uninterrupted_run(tmp_path, tiny_entries, av_dir):
    import random
    import signal

    folder = _collection_folder(tmp_path / "media")
    command = [sys.executable, str(RUNNER), "index", str(folder), "--image-model", "test-clip_tiny", "--audio-model",
               str(av_dir), "--device", "cpu", "-q", "--commit-every", "2", "--workers", "1"]
    started = time.monotonic()
    subprocess.run([*command, "--db", str(tmp_path / "reference")], check=True, capture_output=True)
    whole = time.monotonic() - started
    reference = rows_of(sn.Index(tmp_path / "reference"))
    rng = random.Random(1)
    kills, rounds = 0, 0
    while kills < 20:
        rounds += 1
        db = tmp_path / f"killed{rounds}"
        while True:
            run = subprocess.Popen([*command, "--db", str(db)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                run.wait(timeout=rng.uniform(0.8, whole))
            except subprocess.TimeoutExpired:
                run.send_signal(signal.SIGKILL)
                run.wait()
                kills += 1
                if db.exists():
                    _consistent(db)
                continue
            assert run.returncode == 0
            break
        assert same_rows(rows_of(sn.Index(db)), reference), f"round {rounds}"
    assert kills >= 20


def test_vector_index_search_has_the_exact_searchs_recall(tmp_path):
    """A space past the threshold gets an IVF_HNSW_SQ index; its top-10 files agree with exact search's
    (recall@10 >= 0.98) on clustered vectors, and the z-scores estimated from a sample match the exact ones."""
    import pyarrow as pa

    from sensorium.index.search import Searcher
    from sensorium.index.store import FileRecord, SpaceRecord, Store, rows_schema

    rng = np.random.default_rng(0)
    files, per_file, dim = 400, 50, 64
    centers = rng.normal(size=(64, dim))
    vectors = centers[rng.integers(0, 64, files * per_file)] + 0.6 * rng.normal(size=(files * per_file, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    store = Store(str(tmp_path / "db"))
    space = SpaceRecord("image:synthetic", "rows_synthetic", "image", "none", "none", "{}", dim, None)
    records, rows = [], []
    for f in range(files):
        path, commit = f"/media/{f:04d}.mp4", f"c{f}"
        records.append(FileRecord(path, f"id{f}", "video", 1, 1, "h", "indexed", None, {space.name: per_file}, {},
                                  commit, 0.0))
        for k in range(per_file):
            rows.append({"path": path, "file_id": f"id{f}", "modality": "video", "kind": "segment", "start": 4.0 * k,
                         "end": 4.0 * k + 4, "space": space.name, "policy": "{}", "commit": commit,
                         "vector": vectors[f * per_file + k]})
    with store.lock():
        store.add_space(space)
        store.commit(records, {space.table: pa.Table.from_pylist(rows, schema=rows_schema(dim))})
        assert not store.build_vector_index(space, min_rows=len(rows) + 1)
        assert store.build_vector_index(space, min_rows=1000) and store.vector_index(space) is not None
    exact, approximate = Searcher(store, None, exact=True), Searcher(store, None)
    recalls, z_errors = [], []
    for q in range(40):
        query = vectors[rng.integers(0, len(vectors))] + 0.2 * rng.normal(size=dim).astype(np.float32)
        query = (query / np.linalg.norm(query)).astype(np.float32)
        want = exact.search({space.name: query}, {space.name: space}, top_k=10)
        got = approximate.search({space.name: query}, {space.name: space}, top_k=10)
        recalls.append(len({h.path for h in want} & {h.path for h in got}) / 10)
        same = {h.path: h for h in got}
        z_errors += [abs(same[h.path].rank_score - h.rank_score) for h in want if h.path in same]
    assert np.mean(recalls) >= 0.98, np.mean(recalls)
    assert max(z_errors) < 0.05


def test_when_locates_the_described_sound_in_audio_hits(tmp_path, folder, models, tmp_path_factory):
    from sensorium.tasks.localize import Rules, localize_file

    frame_dir = pe_av_folder(tmp_path_factory.mktemp("pe-a-frame-tiny"), "pe_a_frame_tiny/original")
    frame_model = sn.load(frame_dir, device="cpu")
    index = make_index(tmp_path / "db", models)
    index.add(folder)
    plain = index.search("a train horn", top_k=10)
    hits = index.search("a train horn", top_k=10, when=True, when_model=frame_model, when_threshold=0.0)
    assert {h.path for h in hits} == {h.path for h in plain}
    for place, (before, after) in enumerate(zip(plain, hits)):
        if before.modality == "image":
            assert after.path == before.path  # images keep their places
    for hit in hits:
        if hit.modality == "image":
            assert hit.events is None
            continue
        try:
            _, events = localize_file(frame_model, hit.path, ["a train horn"], Rules(0.0))
        except sn.MediaError as err:  # a video without sound: nothing to locate
            assert "no audio stream" in str(err)
            events = []
        assert [(e.onset, e.offset) for e in hit.events] == [(e.onset, e.offset) for e in events]
        if events:
            best = max(events, key=lambda e: e.score)
            assert (hit.start, hit.end, hit.kind) == (best.onset, best.offset, "event")
    sounding = [h for h in hits if h.modality != "image"]
    best_scores = [max((e.score for e in h.events), default=-1.0) for h in sounding]
    assert best_scores == sorted(best_scores, reverse=True)
    with pytest.raises(ValueError, match="needs a text query"):
        index.search(like=folder / "cat.png", when=True)


def test_without_the_default_sound_model_pictures_are_still_indexed(tmp_path, folder, models):
    index = sn.Index(tmp_path / "db", image_model=models["image"], device="cpu")  # pe-av-small-16-frame: absent
    with pytest.warns(UserWarning, match="no sound model"):
        report = index.add(folder)
    assert sorted(os.path.basename(p) for p in report.indexed) == ["cat.png", "dog.mp4", "dog_small.png", "train.mp4"]
    assert "no sound model" in report.failed[str(folder / "speech.wav")]
    assert {s.name.split(":")[0] for s in index.spaces()} == {"image"}
    # with the model, the next run indexes the sound: the videos' policy changed, the failed sound file too
    later = make_index(tmp_path / "db", models).add(folder)
    assert {"speech.wav", "train.mp4", "dog.mp4"} <= {os.path.basename(p) for p in later.indexed}
    assert any(s.name.startswith("audio_video:") for s in index.spaces())
    with pytest.raises(sn.WeightsNotFoundError):  # a model asked for by name must be there
        sn.Index(tmp_path / "db2", image_model=models["image"], audio_model="pe-av-large", device="cpu").add(folder)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A real two-node Ray cluster on loopback: a head and a second node, one CPU each, stopped afterwards."""
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable))
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--include-dashboard", "false", "--temp-dir", str(temp), *common],
                   check=True, capture_output=True, env=env, timeout=120)
    try:
        subprocess.run([ray_bin, "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
                        *common], check=True, capture_output=True, env=env, timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        ray.shutdown()
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_ray_index_equals_the_local_index(tmp_path, folder, models, ray_cluster):
    import ray

    local = make_index(tmp_path / "local", models)
    local.add(folder)
    distributed = make_index(tmp_path / "ray", models)
    report = distributed.add(folder, ray=ray_cluster)
    assert len(ray.nodes()) == 2 and all(node["Alive"] for node in ray.nodes())
    assert report.nodes == 2  # both nodes embedded files
    assert sorted(report.indexed) == sorted(str(folder / n) for n in
                                            ("cat.png", "dog.mp4", "sub/dog_small.png", "speech.wav", "train.mp4"))
    assert sorted(report.failed) == [str(folder / "corrupt.mp4"), str(folder / "notmedia.mp3")]
    assert same_rows(rows_of(distributed), rows_of(local))
    # resumed: the manifest is consulted first, so an unchanged folder sends nothing to the cluster
    assert distributed.add(folder, ray=ray_cluster).unchanged == 5
