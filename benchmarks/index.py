"""Collections: indexing throughput against the model-only bound, search latency and recall, disk per row, and
the re-index of an unchanged folder.

    python benchmarks/pe_core.py setup              # once: the timm venv that writes random PE-Core weights
    python benchmarks/index.py throughput [--images 200] [--videos 4] [--rounds 2]
    python benchmarks/index.py search [--rows 10000 100000] [--dim 1024] [--queries 200]
    python benchmarks/index.py sound [--images 20] [--sounds 6] [--videos 2] [--rounds 2] [--backend torch auto]
    python benchmarks/index.py reindex [--files 10000]

throughput: `sensorium index` over a mixed folder (photo-sized JPEGs and 10 s videos) with PE-Core-B16-224 at its
real geometry (random weights, timm layout) against the model-only bound: the same frames, decoded and resized
beforehand, through the same model in batches of 32. The index run pays for everything else (hashing, probing,
decoding, resizing, Lance writes); the goal is >= 80 % of the bound.

sound: the same with sound: JPEGs, 30 s recordings and 10 s videos with an AAC track, PE-AV at
pe-av-small-16-frame's geometry (the CPU default; random weights written by transformers) beside PE-Core-B16-224;
the bound adds every PE-AV window the index encodes, decoded beforehand by the index's own readers.

search: synthetic clustered unit vectors in one space (one file per 20 rows), exact search below the vector-index
threshold and IVF_HNSW_SQ with refinement above it; p50/p99 over `--queries` text-free queries (the query vector
is given, so this is the store and the merge, not a text tower), recall@10 of files against exact search, index
build seconds and bytes on disk per row.

reindex: a folder of tiny PNGs indexed once with the tiny test model, then again unchanged: the second run's
seconds (nothing is decoded: size + mtime against the manifest).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
MODEL = "PE-Core-B16-224"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}


def _weights() -> Path:
    """Random PE-Core-B16-224 weights in the timm layout, under the catalog name (so the file names its
    architecture, as a download from the hub does)."""
    made = OUT / f"{MODEL}-random-timm.safetensors"
    if not made.exists():
        timm_python = HERE / ".venv-timm" / "bin" / "python"
        subprocess.run([str(timm_python), str(HERE / "pe_core.py"), "make-weights", MODEL], check=True)
    named = OUT / "b16" / f"{MODEL}.safetensors"
    if not named.exists():
        named.parent.mkdir(parents=True, exist_ok=True)
        os.link(made, named)
    return named


def _folder(images: int, videos: int) -> Path:
    sys.path.insert(0, str(HERE))
    from pe_core import make_jpegs

    folder = OUT / f"mixed-{images}-{videos}"
    make_jpegs(images, folder, size=(1280, 960))
    for i in range(videos):
        target = folder / f"clip{i:02d}.mp4"
        if not target.exists():
            _make_video(target, seconds=10, seed=i)
    return folder


def _make_video(path: Path, seconds: int, seed: int) -> None:
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        base = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
        for t in range(25 * seconds):
            frame = np.roll(base, 4 * t, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def model_bound(folder: Path, weights: Path) -> dict:
    """Frames per second of the model alone on the frames the index reads (pre-decoded, batches of 32)."""
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np
    import torch

    import sensorium as sn
    from sensorium.features.image import pe_normalize
    from sensorium.media.image import open_image
    from sensorium.features.image import pe_resize
    from sensorium.media.video import FixedRate, Uniform, VideoReader
    from sensorium.tasks.visual import pe_resize_array

    model = sn.load(str(weights), config=MODEL, device="cpu")
    frames = []
    for path in sorted(folder.iterdir()):
        if path.suffix == ".jpg":
            frames.append(pe_resize(open_image(str(path)), model.image_size))
        else:
            with VideoReader(str(path)) as video:
                wanted = sorted(set(video.sample(Uniform(8))) | set(video.sample(FixedRate(1.0))))
                frames += [pe_resize_array(rgb, model.image_size) for _, _, rgb in video.frames(wanted)]
    frames = np.stack(frames)
    with torch.inference_mode():
        model.encode_image(pe_normalize(frames[:32]), normalize=False)  # warm-up
        start = time.perf_counter()
        for i in range(0, len(frames), 32):
            model.encode_image(pe_normalize(frames[i:i + 32]), normalize=False)
        seconds = time.perf_counter() - start
    return {"frames": len(frames), "model_s": seconds, "frames_per_s": len(frames) / seconds}


def throughput(images: int, videos: int, rounds: int) -> None:
    print(f"machine: {machine()}")
    weights = _weights()
    folder = _folder(images, videos)
    files = images + videos
    runs, bounds = [], []
    for r in range(rounds):
        db = OUT / "index-throughput-db"
        shutil.rmtree(db, ignore_errors=True)
        command = [sys.executable, "-m", "sensorium.cli", "index", str(folder), "--db", str(db), "--image-model",
                   str(weights), "--device", "cpu", "-q"]
        # sounds are not part of this folder: the videos are silent, so only the image model is loaded
        started = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True, env=_env())
        wall = time.perf_counter() - started
        if run.returncode:
            raise RuntimeError(run.stderr[-3000:])
        match = re.search(r"in ([\d.]+) s", run.stderr)
        runs.append(float(match.group(1)))
        bound = subprocess.run([sys.executable, __file__, "bound", str(folder), str(weights)], capture_output=True,
                               text=True, env=_env(), check=True)
        bounds.append(json.loads(bound.stdout.strip().splitlines()[-1]))
        print(f"  round {r + 1}: index {runs[-1]:.1f} s ({wall:.1f} s with the process start), "
              f"model alone {bounds[-1]['model_s']:.1f} s for {bounds[-1]['frames']} frames", file=sys.stderr)
    index_s, model_s = statistics.median(runs), statistics.median(b["model_s"] for b in bounds)
    print(f"| {images} JPEGs 1280x960 + {videos} videos 10 s ({bounds[0]['frames']} frames) | {files / index_s:.2f} "
          f"files/s | bound {files / model_s:.2f} files/s | {100 * model_s / index_s:.0f} % of the bound |")


def _sound_weights() -> Path:
    """Random weights at pe-av-small-16-frame's geometry (the CPU default sound model), written by transformers."""
    sys.path.insert(0, str(HERE))
    from pe_av import SMALL_WEIGHTS

    if not (SMALL_WEIGHTS / "model.safetensors").exists():
        subprocess.run([str(HERE / ".venv-timm" / "bin" / "python"), str(HERE / "pe_av.py"), "make", "small"], check=True)
        # the tokenizer `load` attaches (indexing embeds no text; the test fixture's is enough to load)
        shutil.copyfile(ROOT / "tests" / "fixtures" / "pe_av" / "tokenizer.json",
                        SMALL_WEIGHTS / "tokenizer.json")
    return SMALL_WEIGHTS


def _make_sound(path: Path, seconds: int, seed: int) -> None:
    """A 44.1 kHz stereo WAV: tones that change every second, over noise."""
    import wave

    import numpy as np

    rng, rate = np.random.default_rng(seed), 44100
    t = np.arange(rate) / rate
    tones = [0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) for _ in range(seconds)]
    mono = np.concatenate(tones) + 0.05 * rng.standard_normal(seconds * rate)
    pcm = (np.clip(np.stack([mono, mono[::-1]], axis=1), -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())


def _make_video_with_sound(path: Path, seconds: int, seed: int) -> None:
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        sound = container.add_stream("aac", rate=48000, layout="stereo")
        base = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
        for t in range(25 * seconds):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.roll(base, 4 * t, axis=1), format="rgb24")):
                container.mux(packet)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(48000 * seconds) / 48000)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            chunk = np.ascontiguousarray(np.stack([tone[start:start + 1024]] * 2))
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, start
            for packet in sound.encode(frame):
                container.mux(packet)
        for out in (stream, sound):
            for packet in out.encode():
                container.mux(packet)


def _sound_folder(images: int, sounds: int, videos: int) -> Path:
    sys.path.insert(0, str(HERE))
    from pe_core import make_jpegs

    folder = OUT / f"sound-{images}-{sounds}-{videos}"
    make_jpegs(images, folder, size=(1280, 960))
    for i in range(sounds):
        if not (folder / f"rec{i:02d}.wav").exists():
            _make_sound(folder / f"rec{i:02d}.wav", seconds=30, seed=i)
    for i in range(videos):
        if not (folder / f"talk{i:02d}.mp4").exists():
            _make_video_with_sound(folder / f"talk{i:02d}.mp4", seconds=10, seed=i)
    return folder


def sound_bound(folder: Path, image_weights: Path, sound_weights: Path) -> dict:
    """Seconds of the models alone on what the index reads of a folder with sound: the picture frames (batches of
    32, as model_bound) and every PE-AV window (window rows, and the 30 s windows of a file row when the file is
    longer than one window), each decoded beforehand with the index's own readers."""
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np
    import torch

    import sensorium as sn
    from sensorium.features.image import pe_normalize, pe_resize
    from sensorium.media.image import open_image
    from sensorium.media.video import FixedRate, Uniform, VideoReader
    from sensorium.tasks.audiovisual import WINDOW_SECONDS, WindowReader, encode_window
    from sensorium.tasks.inputs import MediaItem
    from sensorium.tasks.visual import pe_resize_array

    image = sn.load(str(image_weights), config=MODEL, device="cpu")
    sound = sn.load(str(sound_weights), device="cpu")
    frames, windows = [], []
    for path in sorted(folder.iterdir()):
        if path.suffix == ".jpg":
            frames.append(pe_resize(open_image(str(path)), image.image_size))
            continue
        if path.suffix == ".mp4":
            with VideoReader(str(path)) as video:
                wanted = sorted(set(video.sample(Uniform(8))) | set(video.sample(FixedRate(1.0))))
                frames += [pe_resize_array(rgb, image.image_size) for _, _, rgb in video.frames(wanted)]
        item = MediaItem(str(path), "audio" if path.suffix == ".wav" else "video")
        with WindowReader(sound, item, "audio" if path.suffix == ".wav" else "auto", 10.0, 5.0) as reader:
            kind = reader.kind
            windows += [(kind, a, v) for _, _, a, v in reader]
            whole = not (len(reader.spans) == 1 and reader.duration <= 10.0)
        if whole:
            with WindowReader(sound, item, kind, WINDOW_SECONDS, WINDOW_SECONDS) as reader:
                windows += [(kind, a, v) for _, _, a, v in reader]
    frames = np.stack(frames)
    with torch.inference_mode():
        image.encode_image(pe_normalize(frames[:32]), normalize=False)  # warm-up
        encode_window(sound, *windows[0])
        start = time.perf_counter()
        for i in range(0, len(frames), 32):
            image.encode_image(pe_normalize(frames[i:i + 32]), normalize=False)
        image_s = time.perf_counter() - start
        start = time.perf_counter()
        for window in windows:
            encode_window(sound, *window)
        sound_s = time.perf_counter() - start
    kinds = {k: sum(w[0] == k for w in windows) for k in ("audio", "audio_video")}
    return {"frames": len(frames), "windows": kinds, "model_s": image_s + sound_s, "image_s": image_s,
            "sound_s": sound_s}


def sound_throughput(images: int, sounds: int, videos: int, rounds: int) -> None:
    print(f"machine: {machine()}")
    weights, sound_weights = _weights(), _sound_weights()
    folder = _sound_folder(images, sounds, videos)
    files = images + sounds + videos
    runs, bounds = [], []
    for r in range(rounds):
        db = OUT / "index-sound-db"
        shutil.rmtree(db, ignore_errors=True)
        command = [sys.executable, "-m", "sensorium.cli", "index", str(folder), "--db", str(db), "--image-model",
                   str(weights), "--audio-model", str(sound_weights), "--device", "cpu", "-q"]
        run = subprocess.run(command, capture_output=True, text=True, env=_env())
        if run.returncode:
            raise RuntimeError(run.stderr[-3000:])
        runs.append(float(re.search(r"in ([\d.]+) s", run.stderr).group(1)))
        bound = subprocess.run([sys.executable, __file__, "sound-bound", str(folder), str(weights), str(sound_weights)],
                               capture_output=True, text=True, env=_env())
        if bound.returncode:
            raise RuntimeError(bound.stderr[-3000:])
        bounds.append(json.loads(bound.stdout.strip().splitlines()[-1]))
        b = bounds[-1]
        print(f"  round {r + 1}: index {runs[-1]:.1f} s; models alone {b['model_s']:.1f} s ({b['frames']} frames "
              f"{b['image_s']:.1f} s, windows {b['windows']} {b['sound_s']:.1f} s)", file=sys.stderr)
    index_s, model_s = statistics.median(runs), statistics.median(b["model_s"] for b in bounds)
    print(f"| {images} JPEGs + {sounds} recordings 30 s + {videos} videos 10 s with sound ({bounds[0]['frames']} frames, "
          f"{bounds[0]['windows']} windows) | {files / index_s:.2f} files/s ({index_s:.1f} s) | bound "
          f"{files / model_s:.2f} files/s ({model_s:.1f} s) | {100 * model_s / index_s:.0f} % of the bound |")


def sound_backends(images: int, sounds: int, videos: int, rounds: int, backends: list[str]) -> None:
    """`sensorium index --backend B` on the same folder for each B (sides alternating within each round): what
    the default (auto) gains or costs against torch. Round 1 of auto includes its exports and timings (they are
    kept on disk, so later rounds read them); the export cache is emptied before round 1."""
    print(f"machine: {machine()}")
    weights, sound_weights = _weights(), _sound_weights()
    folder = _sound_folder(images, sounds, videos)
    cache = OUT / "index-export-cache"
    shutil.rmtree(cache, ignore_errors=True)
    seconds: dict[str, list[float]] = {backend: [] for backend in backends}
    for r in range(rounds):
        for backend in backends[r % len(backends):] + backends[:r % len(backends)]:
            db = OUT / "index-sound-db"
            shutil.rmtree(db, ignore_errors=True)
            command = [sys.executable, "-m", "sensorium.cli", "index", str(folder), "--db", str(db), "--image-model",
                       str(weights), "--audio-model", str(sound_weights), "--device", "cpu", "-q",
                       "--backend", backend]
            run = subprocess.run(command, capture_output=True, text=True,
                                 env={**_env(), "SENSORIUM_EXPORT_CACHE": str(cache)})
            if run.returncode:
                raise RuntimeError(run.stderr[-3000:])
            seconds[backend].append(float(re.search(r"in ([\d.]+) s", run.stderr).group(1)))
            print(f"  round {r + 1} --backend {backend}: {seconds[backend][-1]:.1f} s", file=sys.stderr)
    choices = sorted(p.read_text() for p in cache.glob("*/choice-*.json"))
    print("timed choices kept on disk:", *choices, sep="\n  ", file=sys.stderr)
    files = images + sounds + videos
    steady = {backend: statistics.median(times[1:] or times) for backend, times in seconds.items()}
    for backend in backends:
        print(f"| --backend {backend} | rounds: {', '.join(f'{s:.1f}' for s in seconds[backend])} s | after round 1: "
              f"{steady[backend]:.1f} s, {files / steady[backend]:.3f} files/s | "
              f"{steady[backends[0]] / steady[backend]:.2f}x {backends[0]} |")


def _synthetic(store_path: Path, rows: int, dim: int, per_file: int = 20):
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np
    import pyarrow as pa

    from sensorium.index.store import FileRecord, SpaceRecord, Store, rows_schema

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(256, dim)).astype(np.float32)
    store = Store(str(store_path))
    space = SpaceRecord("image:synthetic", "rows_synthetic", "image", "none", "none", "{}", dim, None)
    with store.lock():
        store.add_space(space)
        for start in range(0, rows, 50_000):
            n = min(50_000, rows - start)
            vectors = centers[rng.integers(0, 256, n)] + 0.7 * rng.normal(size=(n, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            files = sorted({(start + i) // per_file for i in range(n)})
            records = [FileRecord(f"/media/{f:07d}.mp4", f"id{f}", "video", 1, 1, "h", "indexed", None, {}, {}, f"c{f}",
                                  0.0) for f in files]
            ids = [(start + i) // per_file for i in range(n)]
            table = pa.table({
                "path": [f"/media/{f:07d}.mp4" for f in ids], "file_id": [f"id{f}" for f in ids],
                "modality": ["video"] * n, "kind": ["segment"] * n,
                "start": [4.0 * ((start + i) % per_file) for i in range(n)],
                "end": [4.0 * ((start + i) % per_file) + 4 for i in range(n)], "space": [space.name] * n,
                "policy": ["{}"] * n, "commit": [f"c{f}" for f in ids],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)}, schema=rows_schema(dim))
            store.commit(records, {space.table: table})
    return store, space, centers


def search(row_counts: list[int], dim: int, queries: int) -> None:
    import numpy as np

    from sensorium.index.search import Searcher
    from sensorium.index.store import ANN_ROWS

    print(f"machine: {machine()}")
    for rows in row_counts:
        path = OUT / f"search-{rows}-{dim}"
        shutil.rmtree(path, ignore_errors=True)
        store, space, centers = _synthetic(path, rows, dim)
        build_s = None
        if rows >= ANN_ROWS:
            started = time.perf_counter()
            with store.lock():
                store.build_vector_index(space)
            build_s = time.perf_counter() - started
        disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        rng = np.random.default_rng(1)
        exact, searcher = Searcher(store, None, exact=True), Searcher(store, None)
        spaces = {space.name: space}
        latencies, recalls = [], []
        for q in range(queries):
            query = centers[rng.integers(0, len(centers))] + 0.7 * rng.normal(size=dim).astype(np.float32)
            query = (query / np.linalg.norm(query)).astype(np.float32)
            started = time.perf_counter()
            got = searcher.search({space.name: query}, spaces, top_k=10)
            latencies.append(time.perf_counter() - started)
            if rows >= ANN_ROWS and q < 50:
                want = exact.search({space.name: query}, spaces, top_k=10)
                recalls.append(len({h.path for h in want} & {h.path for h in got}) / 10)
        latencies = np.array(latencies[1:]) * 1000  # the first query loads the table
        if rows >= ANN_ROWS:  # the exact search it replaces, for comparison
            exact_ms = []
            for q in range(min(queries, 50)):
                query = centers[rng.integers(0, len(centers))] + 0.7 * rng.normal(size=dim).astype(np.float32)
                query = (query / np.linalg.norm(query)).astype(np.float32)
                started = time.perf_counter()
                exact.search({space.name: query}, spaces, top_k=10)
                exact_ms.append((time.perf_counter() - started) * 1000)
            print(f"| {rows:,} x {dim} | exact (for comparison) | p50 {np.percentile(exact_ms[1:], 50):.1f} ms | p99 "
                  f"{np.percentile(exact_ms[1:], 99):.1f} ms | 1 | - | - |", flush=True)
        mode = "IVF_HNSW_SQ, refine 10" if rows >= ANN_ROWS else "exact"
        recall = f"{np.mean(recalls):.3f}" if recalls else "1 (exact)"
        build = f"{build_s:.0f} s" if build_s is not None else "-"
        print(f"| {rows:,} x {dim} | {mode} | p50 {np.percentile(latencies, 50):.1f} ms | p99 "
              f"{np.percentile(latencies, 99):.1f} ms | recall@10 {recall} | build {build} | "
              f"{disk / rows:.0f} bytes/row |", flush=True)


def reindex(files: int) -> None:
    import numpy as np
    from PIL import Image

    print(f"machine: {machine()}")
    folder = OUT / f"tiny-{files}"
    if not folder.exists():
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(files):
            sub = folder / f"d{i // 500:03d}"
            sub.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(sub / f"{i:05d}.png")
    db = OUT / f"tiny-{files}-db"
    shutil.rmtree(db, ignore_errors=True)
    runner = ROOT / "tests" / "cli_runner.py"  # the tiny test models registered, as the tests use them
    cache = OUT / "hf-cache"
    env = {**_env(), "HF_HUB_CACHE": str(cache)}
    subprocess.run([sys.executable, "-c", (
        "import sys; sys.path.insert(0, 'tests'); from helpers import put_in_hf_cache, PE_FIXTURES\n"
        f"put_in_hf_cache({str(cache)!r}, 'test/clip_tiny', {{'clip_tiny.pt': PE_FIXTURES / 'clip_tiny' / 'original.pt'}})")],
        check=True, cwd=ROOT, env=env)
    command = [sys.executable, str(runner), "index", str(folder), "--db", str(db), "--image-model", "test-clip_tiny",
               "--device", "cpu", "-q"]
    times = []
    for attempt in range(3):
        run = subprocess.run(command, capture_output=True, text=True, env=env)
        if run.returncode:
            raise RuntimeError(run.stderr[-3000:])
        times.append(float(re.search(r"in ([\d.]+) s", run.stderr).group(1)))
        print(f"  run {attempt + 1}: {run.stderr.strip().splitlines()[-1]}", file=sys.stderr)
    print(f"| re-index of an unchanged {files:,}-file folder | first run {times[0]:.1f} s | unchanged runs "
          f"{times[1]:.2f}, {times[2]:.2f} s |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "bound":
        print(json.dumps(model_bound(Path(sys.argv[2]), Path(sys.argv[3]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "sound-bound":
        print(json.dumps(sound_bound(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--images", type=int, default=200)
    t.add_argument("--videos", type=int, default=4)
    t.add_argument("--rounds", type=int, default=2)
    s = sub.add_parser("search")
    s.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    s.add_argument("--dim", type=int, default=1024)
    s.add_argument("--queries", type=int, default=200)
    a = sub.add_parser("sound", help="a folder with recordings and videos with sound (PE-AV at pe-av-small's geometry)")
    a.add_argument("--images", type=int, default=20)
    a.add_argument("--sounds", type=int, default=6)
    a.add_argument("--videos", type=int, default=2)
    a.add_argument("--rounds", type=int, default=2)
    a.add_argument("--backend", nargs="+", choices=["torch", "auto", "openvino", "onnxruntime"],
                   help="compare `sensorium index --backend` on the folder instead (no bound), e.g. torch auto")
    r = sub.add_parser("reindex")
    r.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    if args.command == "throughput":
        throughput(args.images, args.videos, args.rounds)
    elif args.command == "sound" and args.backend:
        sound_backends(args.images, args.sounds, args.videos, args.rounds, args.backend)
    elif args.command == "sound":
        sound_throughput(args.images, args.sounds, args.videos, args.rounds)
    elif args.command == "search":
        search(args.rows, args.dim, args.queries)
    else:
        reindex(args.files)


if __name__ == "__main__":
    main()
