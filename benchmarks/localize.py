"""`sensorium localize` on long audio: wall time and peak RSS of a one-hour file against a one-second one.

    python benchmarks/localize.py run                       # tiny fixture model, and pe-a-frame-base shape
    python benchmarks/localize.py run --models tiny --old HEAD~1   # also the code of another commit, for comparison
    python benchmarks/localize.py chunks --models tiny base  # the streamed codec's chunk size: time and peak

Each measurement is a fresh `python -m sensorium.cli localize FILE -m MODEL -Q ... -q -o out.tsv` subprocess,
started by a small parent that reports the child's wall time and peak RSS (getrusage RUSAGE_CHILDREN
ru_maxrss), so every peak is that run's own. Models:

- tiny: the test fixture `tests/fixtures/pe_av/pe_a_frame_tiny/original` (2-channel codec, 48-wide encoder):
  its peak is almost all runtime and audio, so the absolute peak is what the hour costs.
- base: the pe-a-frame-base geometry with transformers' random initialisation, written once by
  `PeAudioFrameLevelModel.save_pretrained` (DAC-VAE 64 channels; audio encoder 1024 wide, 16 layers, 8 heads;
  ModernBERT-large cut at 22 layers), with the test tokenizer beside it. The one-second run is the model and
  runtime; the hour's cost is the one-hour peak minus the one-second peak.
- any folder or catalog name given with --models is run as it is.

`--old REF` also runs the code of commit REF (checked out with `git worktree` under benchmarks/out/, never
committed) on the same files, e.g. the commit before streaming, to compare with the whole-signal behaviour.
Inputs: a 48 kHz mono FLAC (PCM 16) of tones in noise, written minute by minute, and one second of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
RATE = 48000
QUERIES = ("a dog barking", "a man speaking", "rain")
TINY = ROOT / "tests" / "fixtures" / "pe_av" / "pe_a_frame_tiny" / "original"
TOKENIZER = ROOT / "tests" / "fixtures" / "pe_av" / "tokenizer.json"
BASE = OUT / "pe-a-frame-base-random"


# ---------------------------------------------------------------------------------------------------------
# Inputs and weights


def make_audio(seconds: int, path: Path) -> Path:
    """Tones that come and go over noise (so events exist), written a minute at a time."""
    import numpy as np
    import soundfile

    if path.exists():
        return path
    rng = np.random.default_rng(1)
    with soundfile.SoundFile(path, "w", RATE, 1, subtype="PCM_16") as out:
        for start in range(0, seconds, 60):
            t = np.arange(min(60, seconds - start) * RATE) / RATE + start
            tone = 0.2 * np.sin(2 * np.pi * (300 + 5 * (start // 60)) * t) * (np.sin(2 * np.pi * t / 23) > 0.3)
            out.write((tone + 0.02 * rng.standard_normal(len(t))).astype(np.float32))
    return path


def make_base() -> Path:
    """pe-a-frame-base-shaped random weights (transformers' initialisation), written once."""
    if (BASE / "model.safetensors").exists():
        return BASE
    import torch
    from transformers import PeAudioConfig, PeAudioFrameLevelModel

    text = dict(vocab_size=50368, hidden_size=1024, intermediate_size=2624, num_hidden_layers=22,
                num_attention_heads=16, global_attn_every_n_layers=3, local_attention=128,
                pad_token_id=50283, cls_token_id=50281, sep_token_id=50282, bos_token_id=50281, eos_token_id=50282,
                tie_last_hidden_states=False)
    dac = dict(encoder_hidden_size=64, downsampling_ratios=[2, 8, 10, 12], codebook_size=1024, codebook_dim=128,
               sampling_rate=RATE)
    audio = dict(hidden_size=1024, intermediate_size=2752, num_hidden_layers=16, num_attention_heads=8,
                 head_dim=128, num_key_value_heads=8, max_position_embeddings=10000, rms_norm_eps=1e-5,
                 rope_parameters={"rope_type": "default", "rope_theta": 20000.0}, dac_config=dac)
    torch.manual_seed(0)
    model = PeAudioFrameLevelModel(PeAudioConfig(text_config=text, audio_config=audio))
    model.save_pretrained(BASE)
    shutil.copyfile(TOKENIZER, BASE / "tokenizer.json")
    print(f"  wrote {BASE} ({sum(p.numel() for p in model.parameters()):,} parameters)", file=sys.stderr)
    return BASE


def tiny_folder() -> Path:
    """The fixture model with the test tokenizer beside it, as a checkpoint folder has one."""
    folder = OUT / "pe-a-frame-tiny"
    folder.mkdir(parents=True, exist_ok=True)
    for path in [*TINY.iterdir(), TOKENIZER]:
        shutil.copyfile(path, folder / path.name)
    return folder


def model_path(name: str) -> str:
    return str({"tiny": tiny_folder, "base": make_base}[name]()) if name in ("tiny", "base") else name


def old_source(ref: str) -> Path:
    """src/ of commit `ref`, checked out once as a detached worktree under benchmarks/out/ (ignored by git)."""
    commit = subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    tree = OUT / f"old-{commit}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                       capture_output=True)
    return tree / "src"


# ---------------------------------------------------------------------------------------------------------
# Measurement


def measure(source: Path, model: str, audio: Path, events: Path) -> dict:
    """Wall time and peak RSS of one `sensorium localize` run in a fresh process."""
    command = [sys.executable, "-m", "sensorium.cli", "localize", str(audio), "-m", model, "-q", "-o", str(events)]
    for query in QUERIES:
        command += ["-Q", query]
    code = (
        "import resource, subprocess, sys, time; start = time.perf_counter(); "
        f"done = subprocess.run({command!r}); "
        "print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode)"
    )
    env = {**os.environ, "PYTHONPATH": str(source)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    seconds, rss_kb, status = out.stdout.split()
    if status != "0":
        raise RuntimeError(f"localize failed ({status}) on {audio} with {model}:\n{out.stderr[-3000:]}")
    lines = events.read_text().splitlines()
    return {"wall_s": float(seconds), "peak_rss_mb": int(rss_kb) / 1024, "events": len(lines) - 1}


def run(models: list[str], hours: float, old: str | None, repeats: int) -> None:
    import statistics

    OUT.mkdir(exist_ok=True)
    print(f"machine: {machine()}", flush=True)
    long = make_audio(round(hours * 3600), OUT / f"localize-{hours:g}h.flac")
    short = make_audio(1, OUT / "localize-1s.flac")
    sides = [("streaming", ROOT / "src")] + ([(f"old-{old}", old_source(old))] if old else [])
    results = []
    labels = (("1 s", short), (f"{hours:g} h", long))
    for name in models:
        model = model_path(name)
        runs = {side: {label: [] for label, _ in labels} for side, _ in sides}
        hour_events = {}
        for _ in range(repeats):  # the sides interleaved, so drifting load hits both alike
            for label, audio in labels:
                for side, source in sides:
                    events = OUT / f"localize-events-{Path(name).name}-{side}-{label.replace(' ', '')}.tsv"
                    got = measure(source, model, audio, events)
                    runs[side][label].append(got)
                    hour_events[side] = events
                    print(f"  {name} {side} {label}: {got['wall_s']:.1f} s, peak RSS {got['peak_rss_mb']:.0f} MB, "
                          f"{got['events']} events", file=sys.stderr, flush=True)
        for side, _ in sides:
            one = {k: statistics.median(r[k] for r in runs[side]["1 s"]) for k in ("wall_s", "peak_rss_mb")}
            hour = {k: statistics.median(r[k] for r in runs[side][f"{hours:g} h"]) for k in ("wall_s", "peak_rss_mb")}
            results.append({"model": name, "side": side, "repeats": repeats, "runs": runs[side]})
            print(f"| {name} | {side} | {one['wall_s']:.1f} s | {one['peak_rss_mb']:.0f} MB | {hour['wall_s']:.0f} s "
                  f"| {hour['peak_rss_mb']:.0f} MB | {hour['peak_rss_mb'] - one['peak_rss_mb']:+.0f} MB |", flush=True)
        (OUT / f"localize-{Path(name).name}.json").write_text(json.dumps(results, indent=1))
        if len(hour_events) == 2:
            print(f"  {name}, {hours:g} h: {compare_events(*hour_events.values())}", flush=True)


def compare_events(ours: Path, theirs: Path) -> str:
    """Whether two event tables have the same spans, and how far apart their scores are."""
    def rows(path):
        return [line.split("\t") for line in path.read_text().splitlines()[1:]]

    a, b = rows(ours), rows(theirs)
    same = [r[:4] for r in a] == [r[:4] for r in b]
    scores = max((abs(float(x[4]) - float(y[4])) for x, y in zip(a, b)), default=0.0)
    return f"{len(a)} vs {len(b)} events, spans {'identical' if same else 'DIFFERENT'}, max score diff {scores:.1e}"


CHUNK_CHILD = """
import resource, sys, time
import torch, sensorium as sn
from sensorium.media.audio import load_audio
model, audio, chunk = sn.load(sys.argv[1], device="cpu"), sys.argv[2], int(sys.argv[3])
signal = load_audio(audio, 48000, downmix="ffmpeg")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
blocks = [signal[i:i + 48000] for i in range(0, len(signal), 48000)]
with torch.inference_mode():
    start = time.perf_counter()
    model.stream_latents(iter(blocks), chunk=chunk)
    seconds = time.perf_counter() - start
print(seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


def chunks(models: list[str], seconds: int, repeats: int) -> None:
    """The streamed codec alone (stream_latents) at STREAM_CODEC_CHUNK (6 s) and CODEC_CHUNK (30 s) frames
    per call, same 1 s margins: median wall time and the peak RSS it adds over model + decoded audio, each
    measurement a fresh process, the two sizes interleaved."""
    import statistics

    sys.path.insert(0, str(ROOT / "src"))
    from sensorium.models.pe_audio import CODEC_CHUNK, STREAM_CODEC_CHUNK

    print(f"machine: {machine()}", flush=True)
    audio = make_audio(seconds, OUT / f"localize-{seconds}s.flac")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    print(f"| model | {seconds} s through the codec | median wall | added peak RSS |")
    print("|---|---|---|---|")
    for name in models:
        model = model_path(name)
        runs = {STREAM_CODEC_CHUNK: [], CODEC_CHUNK: []}
        for _ in range(repeats):
            for chunk in runs:
                out = subprocess.run([sys.executable, "-c", CHUNK_CHILD, model, str(audio), str(chunk)],
                                     capture_output=True, text=True, env=env, check=True)
                wall, added = map(float, out.stdout.split())
                runs[chunk].append((wall, added))
                print(f"  {name} chunk {chunk}: {wall:.1f} s, +{added:.0f} MB", file=sys.stderr, flush=True)
        for chunk, values in runs.items():
            print(f"| {name} | {chunk} frames ({chunk * 0.04:g} s) per call | "
                  f"{statistics.median(v[0] for v in values):.1f} s | {statistics.median(v[1] for v in values):.0f} MB |",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="write the pe-a-frame-base-shaped random weights and the audio files")
    r = sub.add_parser("run")
    r.add_argument("--models", nargs="+", default=["tiny", "base"],
                   help="tiny, base (random pe-a-frame-base shape), or model folders / catalog names")
    r.add_argument("--hours", type=float, default=1.0)
    r.add_argument("--old", metavar="REF", help="also run the code of this commit (e.g. the one before streaming)")
    r.add_argument("--repeats", type=int, default=1, help="runs per side and file; medians are reported")
    c = sub.add_parser("chunks")
    c.add_argument("--models", nargs="+", default=["tiny", "base"])
    c.add_argument("--seconds", type=int, default=60)
    c.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.command == "chunks":
        chunks(args.models, args.seconds, args.repeats)
    elif args.command == "setup":
        OUT.mkdir(exist_ok=True)
        make_base()
        make_audio(3600, OUT / "localize-1h.flac")
        make_audio(1, OUT / "localize-1s.flac")
    else:
        run(args.models, args.hours, args.old, args.repeats)


if __name__ == "__main__":
    main()
