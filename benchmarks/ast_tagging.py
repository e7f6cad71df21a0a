"""AST tagging speed and memory: sensorium vs transformers 5.23 on the same weights and clips.

    python benchmarks/ast_tagging.py features     # (a) Kaldi fbank of 100 ten-second clips vs ASTFeatureExtractor
    python benchmarks/ast_tagging.py tag          # (b) end to end from files: decode + features + model, fp32 and bf16
    python benchmarks/ast_tagging.py long         # (c) `sensorium tag` on a one-hour file: wall time and peak RSS

Weights: the AudioSet geometry (768 wide, 12 layers, 1214 tokens, 527 labels) with random values, written by
transformers' save_pretrained and loaded by both sides. Clips: 10 s, 48 kHz stereo FLAC (so both sides
decode, downmix and resample). The transformers side decodes with `transformers.audio_utils.load_audio`
(soundfile + soxr, its fallback without torchcodec), runs ASTFeatureExtractor and ASTForAudioClassification
in batches of 8 and applies a sigmoid; sensorium runs `sensorium.tag` with batches of 8 windows. Sides
alternate within each round; tables give medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE.parent / "src"))


def make_weights() -> Path:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    folder = OUT / "ast-audioset-random"
    if not (folder / "model.safetensors").exists():
        torch.manual_seed(0)
        ASTForAudioClassification(ASTConfig(num_labels=527)).save_pretrained(folder)
        ASTFeatureExtractor().save_pretrained(folder)
    return folder


def make_clips(count: int, seconds: float = 10.0, rate: int = 48000) -> list[Path]:
    import soundfile

    folder = OUT / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    for i in range(count):
        path = folder / f"clip{i:03d}.flac"
        if not path.exists():
            tones = sum(0.1 * np.sin(2 * np.pi * f * t + i) for f in rng.uniform(80, 6000, 5))
            noise = rng.standard_normal((len(t), 2)) * 0.05
            soundfile.write(path, (tones[:, None] + noise).astype(np.float32), rate, subtype="PCM_16")
        paths.append(path)
    return paths


def _median_times(fns: dict, rounds: int) -> dict[str, list[float]]:
    times = {name: [] for name in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for name in order:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
            print(f"  round {r + 1}/{rounds} {name}: {times[name][-1]:.2f} s", file=sys.stderr)
    return times


def bench_features(rounds: int, count: int) -> dict:
    from transformers import ASTFeatureExtractor

    from sensorium.features.fbank import fixed_length_fbank
    from sensorium.media.audio import load_audio

    clips = [load_audio(p, 16000) for p in make_clips(count)]
    reference = ASTFeatureExtractor()
    tensors = [torch.from_numpy(c) for c in clips]

    def ours(precision):
        features, _ = fixed_length_fbank(tensors, 1024, precision=precision)
        return (features - reference.mean) / (2 * reference.std)

    expected = reference(clips, sampling_rate=16000, return_tensors="pt")["input_values"]
    errors = {p: float((ours(p) - expected).abs().max()) for p in ("float64", "float32")}
    times = _median_times({
        "transformers": lambda: reference(clips, sampling_rate=16000, return_tensors="pt"),
        "sensorium float64": lambda: ours("float64"),
        "sensorium float32": lambda: ours("float32"),
    }, rounds)
    return {"clips": count, "rounds": rounds, "max_abs_error": errors,
            "median_s": {k: statistics.median(v) for k, v in times.items()}, "all": times}


def bench_tag(rounds: int, count: int, batch: int) -> dict:
    import sensorium as sn
    from transformers import ASTFeatureExtractor, ASTForAudioClassification
    from transformers.audio_utils import load_audio as hf_load_audio

    folder = make_weights()
    paths = [str(p) for p in make_clips(count)]
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        reference = ASTForAudioClassification.from_pretrained(folder, dtype=dtype).eval()
        extractor = ASTFeatureExtractor.from_pretrained(folder)
        ours = sn.load(folder, device="cpu", dtype=dtype)

        @torch.inference_mode()
        def transformers_side():
            scores = []
            for i in range(0, len(paths), batch):
                audio = [hf_load_audio(p, sampling_rate=16000, backend="soundfile") for p in paths[i : i + batch]]
                inputs = extractor(audio, sampling_rate=16000, return_tensors="pt")["input_values"].to(dtype)
                scores.append(torch.sigmoid(reference(inputs).logits.float()))
            return torch.cat(scores)

        def sensorium_side():
            return sn.tag(paths, model=ours, batch_size=batch, top_k=527)

        theirs = transformers_side()
        rows = sensorium_side()
        ours_scores = np.stack([r.window_scores[0] for r in rows])
        agreement = float(np.abs(ours_scores - theirs.numpy()).max())
        # The two sides resample 48 -> 16 kHz differently (soxr vs FFmpeg); on the same waveforms they agree:
        from sensorium.media.audio import load_audio

        with torch.inference_mode():
            same_input = extractor([load_audio(p, 16000) for p in paths], sampling_rate=16000,
                                   return_tensors="pt")["input_values"].to(dtype)
            theirs_same = torch.sigmoid(reference(same_input).logits.float()).numpy()
        same_agreement = float(np.abs(ours_scores - theirs_same).max())
        times = _median_times({"transformers": transformers_side, "sensorium": sensorium_side}, rounds)
        name = str(dtype).split(".")[-1]
        results[name] = {"clips": count, "batch": batch, "rounds": rounds, "max_abs_score_diff": agreement,
                         "max_abs_score_diff_same_waveforms": same_agreement,
                         "median_s": {k: statistics.median(v) for k, v in times.items()}, "all": times}
    return results


def bench_long(hours: float, dtype: str) -> dict:
    import soundfile

    folder = make_weights()
    path = OUT / f"long-{hours:g}h.flac"
    if not path.exists():
        rate, rng = 16000, np.random.default_rng(1)
        with soundfile.SoundFile(path, "w", rate, 1, subtype="PCM_16") as out:
            t = np.arange(rate * 60) / rate
            for minute in range(int(hours * 60)):
                tone = 0.2 * np.sin(2 * np.pi * (200 + 10 * minute) * t)
                out.write((tone + rng.standard_normal(len(t)) * 0.02).astype(np.float32))
    short = OUT / "one-second.flac"
    soundfile.write(short, np.zeros(16000, np.float32), 16000)
    command = [sys.executable, "-m", "sensorium.cli", "tag", "--model", str(folder), "--dtype", dtype, "-q",
               "-o", str(OUT / "long-tags.jsonl")]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    runs = {}
    for name, target in (("one second (model + runtime)", short), (f"{hours:g} h", path)):
        code = (
            "import resource, subprocess, sys, time; start = time.perf_counter(); "
            f"subprocess.run({command + [str(target)]!r}, check=True); "
            "print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        seconds, rss_kb = out.stdout.split()
        runs[name] = {"wall_s": float(seconds), "peak_rss_mb": int(rss_kb) / 1024}
        print(f"  {name}: {float(seconds):.1f} s, peak RSS {int(rss_kb) / 1024:.0f} MB", file=sys.stderr)
    windows = len(json.loads((OUT / "long-tags.jsonl").read_text().splitlines()[0]).get("labels", [])) or None
    return {"file": str(path.name), "dtype": dtype, "runs": runs, "labels_written": windows}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("features")
    f.add_argument("--rounds", type=int, default=5)
    f.add_argument("--clips", type=int, default=100)
    t = sub.add_parser("tag")
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--clips", type=int, default=24)
    t.add_argument("--batch", type=int, default=8)
    long = sub.add_parser("long")
    long.add_argument("--hours", type=float, default=1.0)
    long.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    print(f"machine: {machine()}")
    if args.command == "features":
        r = bench_features(args.rounds, args.clips)
        hf = r["median_s"]["transformers"]
        print(f"| {r['clips']} clips of 10 s | transformers {hf:.2f} s |" + "".join(
            f" {k} {v:.2f} s ({hf / v:.1f}x, max err {r['max_abs_error'][k.split()[-1]]:.1e}) |"
            for k, v in r["median_s"].items() if k != "transformers"))
    elif args.command == "tag":
        r = bench_tag(args.rounds, args.clips, args.batch)
        for dtype, v in r.items():
            m = v["median_s"]
            print(f"| {dtype} | {v['clips']} clips | transformers {m['transformers']:.1f} s ({v['clips'] / m['transformers']:.2f} clips/s) "
                  f"| sensorium {m['sensorium']:.1f} s ({v['clips'] / m['sensorium']:.2f} clips/s) | "
                  f"{m['transformers'] / m['sensorium']:.2f}x | max score diff {v['max_abs_score_diff']:.1e} "
                  f"(same waveforms: {v['max_abs_score_diff_same_waveforms']:.1e}) |")
    else:
        r = bench_long(args.hours, args.dtype)
    (OUT / f"ast-{args.command}.json").write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
