"""AST tagging speed and memory: sensorium vs transformers 5.23 on the same weights and clips, and the model
alone vs the runtimes a user could pick instead.

    python benchmarks/ast_tagging.py features     # (a) Kaldi fbank of 100 ten-second clips vs ASTFeatureExtractor
    python benchmarks/ast_tagging.py tag          # (b) end to end from files: decode + features + model, fp32 and bf16
    python benchmarks/ast_tagging.py long         # (c) `sensorium tag` on a one-hour file: wall time and peak RSS
    python benchmarks/pe_core.py setup            # once, for (d): ONNX Runtime, OpenVINO in benchmarks/.venv-timm
    python benchmarks/pe_av.py setup              # once, for (d): transformers 5.23 into that venv
    python benchmarks/bound.py                    # the machine's GEMM bounds (benchmarks/out/bound.json)
    python benchmarks/ast_tagging.py models       # (d) the model on fbank features, batch 8, fp32 and bf16: sensorium
                                                  # (eager; -compile; -openvino, -onnxruntime: its backend= option),
                                                  # transformers eager, torch.compile(transformers)
                                                  # with freezing, ONNX Runtime (torch.onnx export of transformers'
                                                  # model), OpenVINO (its converter on transformers' model;
                                                  # -throughput: 2 requests in flight)

Weights: the AudioSet geometry (768 wide, 12 layers, 1214 tokens, 527 labels) with random values, written by
transformers' save_pretrained and loaded by both sides. Clips: 10 s, 48 kHz stereo FLAC (so both sides
decode, downmix and resample). The transformers side decodes with `transformers.audio_utils.load_audio`
(soundfile + soxr, its fallback without torchcodec), runs ASTFeatureExtractor and ASTForAudioClassification
in batches of 8 and applies a sigmoid; sensorium runs `sensorium.tag` with batches of 8 windows. Sides
alternate within each round; tables give medians.

`models` times logits from the same features (ASTFeatureExtractor's, of the first clips), as benchmarks/pe_core.py
does for PE-Core: each runtime in its own process (so peak RSS is that run's own; the peers in the peer venv,
which never imports sensorium), the order rotated every round, medians over rounds, and every runtime's
logits compared with transformers fp32's before its speed counts.
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

from common import machine, onnxruntime_forward, openvino_forward, peak_rss_mb, run_json, time_forward

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
PEER_PYTHON = HERE / ".venv-timm" / "bin" / "python"
WEIGHTS = OUT / "ast-audioset-random"
sys.path.insert(0, str(HERE.parent / "src"))


def make_weights() -> Path:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    if not (WEIGHTS / "model.safetensors").exists():
        torch.manual_seed(0)
        ASTForAudioClassification(ASTConfig(num_labels=527)).save_pretrained(WEIGHTS)
        ASTFeatureExtractor().save_pretrained(WEIGHTS)
    return WEIGHTS


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


# ---------------------------------------------------------------------------------------------------------
# The model alone vs other runtimes (workers run in a fresh process each)

IMPLS = ("sensorium", "sensorium-compile", "sensorium-openvino", "sensorium-onnxruntime", "sensorium-auto",
         "transformers", "transformers-compile", "onnxruntime", "openvino", "openvino-throughput")
PEERS = tuple(impl for impl in IMPLS if not impl.startswith("sensorium"))  # run in the peer environment
# which (impl, dtype) pairs exist: ONNX Runtime's CPU provider has no bf16 kernels for this model; torch.compile of
# transformers' model is timed in bf16, as timm's in pe_core.py. sensorium-openvino / -onnxruntime: `backend=`
# (sensorium's own modules exported, the export cached in ~/.cache/sensorium/exported); sensorium-auto: the
# index's and the service's default, OpenVINO kept only if timed faster on the first batch
PAIRS = {"fp32": ("sensorium", "sensorium-compile", "sensorium-openvino", "sensorium-onnxruntime", "sensorium-auto",
                  "transformers", "onnxruntime", "openvino", "openvino-throughput"),
         "bf16": ("sensorium", "sensorium-compile", "sensorium-openvino", "sensorium-auto", "transformers",
                  "transformers-compile", "openvino", "openvino-throughput")}


def make_features(batch: int) -> Path:
    """ASTFeatureExtractor's features of the first `batch` clips (decoded and resampled by sensorium), the input
    every runtime gets; made once."""
    from transformers import ASTFeatureExtractor

    from sensorium.media.audio import load_audio

    path = OUT / f"ast-features-b{batch}.npy"
    if not path.exists():
        audio = [load_audio(p, 16000) for p in make_clips(batch)]
        extractor = ASTFeatureExtractor.from_pretrained(make_weights())
        np.save(path, extractor(audio, sampling_rate=16000, return_tensors="np")["input_values"])
    return path


class Logits(torch.nn.Module):
    """transformers' model with the logits as its one output, which torch.onnx and OpenVINO trace
    (`return_dict=False` breaks ASTForAudioClassification's forward in 5.23)."""

    def __init__(self, dtype: torch.dtype):
        from transformers import ASTForAudioClassification

        super().__init__()
        self.model = ASTForAudioClassification.from_pretrained(WEIGHTS, dtype=dtype).eval()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model(features).logits


def _onnx_file(batch: int) -> Path:
    """transformers' model exported by torch.onnx (dynamo), fp32, batch fixed; made once and kept in benchmarks/out."""
    path = OUT / f"ast-audioset-random-b{batch}.onnx"
    if not path.exists():
        torch.onnx.export(Logits(torch.float32), (torch.zeros(batch, 1024, 128),), str(path), dynamo=True)
    return path


def worker(impl: str, dtype_name: str, batch: int, iters: int) -> dict:
    """One runtime on the same weights and features: clips/s (median of `iters` timed calls after a warm-up),
    peak RSS, and the logits (saved, so that the parent compares every runtime with transformers fp32)."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    features = torch.from_numpy(np.load(OUT / f"ast-features-b{batch}.npy"))
    start = time.perf_counter()
    if impl in ("transformers", "transformers-compile"):
        forward = Logits(dtype)
        if impl == "transformers-compile":  # inductor with frozen weights (constant-folded, prepacked for oneDNN)
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            forward = torch.compile(forward)
        inputs = features.to(dtype)
    elif impl.startswith("sensorium"):
        import sensorium as sn

        backend = impl.split("-")[1] if impl in ("sensorium-openvino", "sensorium-onnxruntime",
                                                  "sensorium-auto") else "torch"
        model = sn.load(WEIGHTS, device="cpu", dtype=dtype, backend=backend,
                        compile=impl == "sensorium-compile")  # compiled: inductor's cache in ~/.cache/sensorium
        forward = model.classify
        inputs = features.to(dtype)
    elif impl == "onnxruntime":
        forward = onnxruntime_forward(_onnx_file(batch))
        inputs = features.numpy()
    else:  # OpenVINO converts transformers' torch module itself (its PyTorch frontend), weights fp32
        forward, batches = openvino_forward(Logits(torch.float32), features, dtype_name, impl == "openvino-throughput")
        batch *= batches  # two in flight: clips/s counts both
        inputs = features.numpy()
    loaded_rss = peak_rss_mb()
    out, times, prepare_s = time_forward(forward, inputs, iters, start)
    if impl == "sensorium-compile" and model.classify.failure:  # it fell back to eager: not what this row claims
        raise RuntimeError(f"sensorium-compile ran eagerly: {model.classify.failure}")
    if impl in ("sensorium-openvino", "sensorium-onnxruntime") and not model.classify.runners:
        raise RuntimeError(f"{impl} ran eagerly: {model.classify.failures}")
    if impl == "sensorium-auto":  # which way the timed choice went (eager or OpenVINO)
        from sensorium.nn.exported import backend_choices

        print(f"  sensorium-auto {dtype_name}: {backend_choices(model)}", file=sys.stderr)
    np.save(OUT / f"out-{impl}-ast-{dtype_name}.npy", out.float().numpy())
    return {
        "impl": impl, "dtype": dtype_name, "batch": batch,
        "clips_per_s": batch / statistics.median(times), "times": times, "prepare_s": prepare_s,
        "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": loaded_rss,
    }


def _run_worker(impl: str, *args: str) -> dict:
    python = str(PEER_PYTHON) if impl in PEERS else sys.executable
    return run_json([python, __file__, "worker", impl, *args], f"{impl} worker")


def flops_per_clip() -> float:
    """The model's FLOPs for one clip: torch's FLOP counter over transformers' fp32 forward, batch 1, with eager
    attention (the counter has no formula for the CPU's fused SDPA kernel, so it would miss attention's 21 %)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import ASTForAudioClassification

    model = ASTForAudioClassification.from_pretrained(WEIGHTS, attn_implementation="eager").eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, model.config.max_length, model.config.num_mel_bins))
    return float(counter.get_total_flops())


def bench_models(rounds: int, iters: int, batch: int, dtypes: list[str], only: list[str] | None = None) -> list[dict]:
    """Every runtime of PAIRS in each dtype, the order rotated every round; medians; each runtime's logits
    compared with transformers fp32's on the same features before its speed counts."""
    from bound import gemm_bound

    make_features(batch)
    bound = {dtype: gemm_bound(dtype) for dtype in ("fp32", "bf16")}
    flops = flops_per_clip()
    rows = []
    for dtype in ["fp32"] + [d for d in dtypes if d != "fp32"]:  # fp32 first: transformers fp32 is the reference
        impls = tuple(i for i in PAIRS[dtype] if not only or i in only or i in ("transformers", "sensorium"))
        if dtype not in dtypes:  # only the reference: transformers fp32, its logits and its speed
            impls = ("transformers",)
        runs: dict[str, list[dict]] = {impl: [] for impl in impls}
        for r in range(rounds):
            order = impls[r % len(impls):] + impls[:r % len(impls)]
            for impl in order:
                runs[impl].append(_run_worker(impl, dtype, str(batch), str(iters)))
                print(f"  {dtype} round {r + 1}/{rounds} {impl}: {runs[impl][-1]['clips_per_s']:.2f} clips/s",
                      file=sys.stderr)
        reference = np.load(OUT / "out-transformers-ast-fp32.npy")
        for impl in impls:
            out = np.load(OUT / f"out-{impl}-ast-{dtype}.npy")[: len(reference)]
            speed = statistics.median(r["clips_per_s"] for r in runs[impl])
            rows.append({
                "dtype": dtype, "impl": impl, "batch": batch, "rounds": rounds, "iters": iters,
                "clips_s": speed, "all_clips_s": [r["clips_per_s"] for r in runs[impl]],
                "prepare_s": statistics.median(r["prepare_s"] for r in runs[impl]),
                "peak_mb": statistics.median(r["peak_rss_mb"] for r in runs[impl]),
                "max_err_vs_transformers_fp32": float(np.abs(out - reference).max() / np.abs(reference).max()),
                "gflop_s": speed * flops / 1e9, "fraction_of_bound": speed * flops / 1e9 / bound[dtype],
                "bound_gflop_s": bound[dtype], "flops_per_clip": flops,
            })
    transformers_fp32 = next(r["clips_s"] for r in rows if r["impl"] == "transformers" and r["dtype"] == "fp32")
    for row in rows:
        row["vs_transformers_fp32"] = row["clips_s"] / transformers_fp32
        ours = next((r for r in rows if (r["dtype"], r["impl"]) == (row["dtype"], "sensorium")), row)
        row["sensorium_vs_this"] = ours["clips_s"] / row["clips_s"]
    return rows


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
    models = sub.add_parser("models")
    models.add_argument("--rounds", type=int, default=3)
    models.add_argument("--iters", type=int, default=3)
    models.add_argument("--batch", type=int, default=8)
    models.add_argument("--dtype", action="append", choices=["fp32", "bf16"])
    models.add_argument("--only", action="append", choices=IMPLS,
                        help="runtimes to run (default: all; transformers and sensorium always)")
    w = sub.add_parser("worker")
    w.add_argument("impl")
    w.add_argument("dtype")
    w.add_argument("batch", type=int)
    w.add_argument("iters", type=int)
    args = parser.parse_args()
    if args.command == "worker":  # its last line of stdout is its result, read by _run_worker
        print(json.dumps(worker(args.impl, args.dtype, args.batch, args.iters)))
        return
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
    elif args.command == "models":
        r = bench_models(args.rounds, args.iters, args.batch, args.dtype or ["fp32", "bf16"], args.only)
        print("| dtype | runtime | clips/s | vs transformers fp32 | sensorium vs it | fraction of the GEMM bound | "
              "max error vs transformers fp32 | setup s | peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for row in r:
            print(f"| {row['dtype']} | {row['impl']} | {row['clips_s']:.2f} | {row['vs_transformers_fp32']:.2f}x | "
                  f"{row['sensorium_vs_this']:.2f}x | {100 * row['fraction_of_bound']:.0f} % of "
                  f"{row['bound_gflop_s']:.0f} | {row['max_err_vs_transformers_fp32']:.1e} | {row['prepare_s']:.1f} | "
                  f"{row['peak_mb']:.0f} |")
    else:
        r = bench_long(args.hours, args.dtype)
    (OUT / f"ast-{args.command}.json").write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
