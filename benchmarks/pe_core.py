"""PE-Core speed and memory: sensorium vs timm on the same weights and inputs, and `sensorium embed` end to end.

    python benchmarks/pe_core.py setup             # a separate venv with timm (benchmarks/.venv-timm)
    python benchmarks/pe_core.py models            # image tower, batch 8, fp32 and bf16, B16-224 and L14-336
    python benchmarks/pe_core.py embed             # `sensorium embed` over 200 photo-sized JPEGs, decode overlapped or not

Each measurement runs in its own process (so peak RSS is that run's own), the two sides alternate within
every round, and the table gives medians over rounds. timm is installed --no-deps in its own environment:
no CPU torchvision wheel matches this machine's torch, and timm imports torchvision at module level
without using it for these models, so that environment gets a small import stub (see `setup`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
TIMM_VENV = HERE / ".venv-timm"
MODELS = {"PE-Core-B16-224": "vit_pe_core_base_patch16_224", "PE-Core-L14-336": "vit_pe_core_large_patch14_336"}
TIMM_NAMES = {**MODELS, "PE-Core-T16-384": "vit_pe_core_tiny_patch16_384"}

TORCHVISION_STUB = '''"""Import stub for timm in the benchmark environment (see benchmarks/pe_core.py)."""
import enum


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class _Missing:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision is stubbed in this benchmark environment")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing
'''


def setup() -> None:
    python = TIMM_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TIMM_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["--no-deps", "timm==1.0.31"], check=True)
    subprocess.run(pip + ["pyyaml", "huggingface_hub", "safetensors", "numpy", "pillow"], check=True)
    site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    for module in ("", "ops", "ops/misc", "transforms", "transforms/functional", "transforms/v2", "datasets", "io"):
        folder = Path(site) / "torchvision" / module
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text(TORCHVISION_STUB)
    subprocess.run([str(python), "-c", "import timm; print('timm', timm.__version__)"], check=True)


# ---------------------------------------------------------------------------------------------------------
# Workers (each runs in a fresh process)


def make_weights(name: str) -> Path:
    """Random weights in the timm layout, written by timm itself (run inside the timm venv)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(TIMM_NAMES[name], pretrained=False)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["head.bias"] = torch.zeros_like(state["head.bias"])  # PE's projection has no bias
    path = OUT / f"{name}-random-timm.safetensors"
    save_file(state, path)
    return path


def worker(impl: str, name: str, dtype_name: str, batch: int, iters: int) -> dict:
    import resource

    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    weights = OUT / f"{name}-random-timm.safetensors"
    if impl == "timm":
        import timm
        from safetensors.torch import load_file

        model = timm.create_model(MODELS[name], pretrained=False)
        model.load_state_dict(load_file(weights))
        model = model.eval().to(dtype)
        forward = model
        size = model.pretrained_cfg["input_size"][-1]
    else:
        sys.path.insert(0, str(HERE.parent / "src"))
        import sensorium as sn

        model = sn.load(weights, config=name, device="cpu", dtype=dtype)
        forward = lambda x: model.encode_image(x, normalize=False)  # noqa: E731  pooled + projected, as timm
        size = model.image_size
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, 3, size, size, generator=generator).to(dtype)
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    with torch.inference_mode():
        forward(pixels)  # warm-up
        for _ in range(iters):
            start = time.perf_counter()
            out = forward(pixels)
            times.append(time.perf_counter() - start)
    return {
        "impl": impl, "model": name, "dtype": dtype_name, "batch": batch,
        "images_per_s": batch / statistics.median(times), "times": times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_after_load_mb": loaded_rss,
        "out_norm": float(out.float().norm()),
    }


def _python(impl: str) -> str:
    return str(TIMM_VENV / "bin" / "python") if impl == "timm" else sys.executable


def _run_worker(impl: str, *args: str) -> dict:
    result = subprocess.run([_python(impl), __file__, "worker", impl, *args], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{impl} worker failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_models(rounds: int, iters: int, batch: int, models: list[str], dtypes: list[str]) -> list[dict]:
    OUT.mkdir(exist_ok=True)
    for name in models:
        if not (OUT / f"{name}-random-timm.safetensors").exists():
            subprocess.run([_python("timm"), __file__, "make-weights", name], check=True)
    rows = []
    for name in models:
        for dtype in dtypes:
            runs: dict[str, list[dict]] = {"sensorium": [], "timm": []}
            for r in range(rounds):
                order = ("sensorium", "timm") if r % 2 == 0 else ("timm", "sensorium")
                for impl in order:
                    runs[impl].append(_run_worker(impl, name, dtype, str(batch), str(iters)))
                    print(f"  {name} {dtype} round {r + 1}/{rounds} {impl}: "
                          f"{runs[impl][-1]['images_per_s']:.2f} img/s", file=sys.stderr)
            ours, theirs = runs["sensorium"], runs["timm"]
            row = {
                "model": name, "dtype": dtype, "batch": batch, "rounds": rounds, "iters": iters,
                "sensorium_img_s": statistics.median(r["images_per_s"] for r in ours),
                "timm_img_s": statistics.median(r["images_per_s"] for r in theirs),
                "sensorium_peak_mb": statistics.median(r["peak_rss_mb"] for r in ours),
                "timm_peak_mb": statistics.median(r["peak_rss_mb"] for r in theirs),
                "same_output_norm": abs(ours[0]["out_norm"] - theirs[0]["out_norm"]) / theirs[0]["out_norm"],
            }
            row["speed_ratio"] = row["sensorium_img_s"] / row["timm_img_s"]
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------
# End to end


def make_jpegs(count: int, folder: Path, size: tuple[int, int] = (1920, 1280)) -> None:
    """Photo-sized JPEGs (smooth colour fields plus noise, so they do not compress to nothing)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    width, height = size
    for i in range(count):
        path = folder / f"img{i:04d}.jpg"
        if path.exists():
            continue
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack([(xx * (i % 3 + 1) / 8) % 256, (yy * (i % 5 + 1) / 8) % 256, ((xx + yy) / 16 + 13 * i) % 256], -1)
        noise = rng.normal(0, 10, (height, width, 3)).astype(np.float32)
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def bench_embed(rounds: int, count: int, batch: int, workers: int, models: list[str]) -> list[dict]:
    folder = OUT / "jpegs"
    make_jpegs(count, folder)
    rows = []
    for name in models:
        weights = OUT / f"{name}-random-timm.safetensors"
        if not weights.exists():
            subprocess.run([_python("timm"), __file__, "make-weights", name], check=True)
        results: dict[str, list[float]] = {"overlapped": [], "sequential": []}
        for r in range(rounds):
            order = ("overlapped", "sequential") if r % 2 == 0 else ("sequential", "overlapped")
            for mode in order:
                command = [sys.executable, "-m", "sensorium.cli", "embed", str(folder), "--model", str(weights),
                           "--config", name, "--batch-size", str(batch),
                           "--workers", str(workers if mode == "overlapped" else 0), "-q", "-o", str(OUT / "embed.npy")]
                env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
                run = subprocess.run(command, capture_output=True, text=True, env=env)
                match = re.search(r"(\d+) inputs done in ([\d.]+) s", run.stderr)
                if run.returncode or not match:
                    raise RuntimeError(run.stderr)
                results[mode].append(int(match.group(1)) / float(match.group(2)))
                print(f"  embed {name} round {r + 1}/{rounds} {mode}: {results[mode][-1]:.2f} img/s", file=sys.stderr)
        rows.append({"model": name, "images": count, "batch": batch, "workers": workers, "rounds": rounds,
                     "overlapped_img_s": statistics.median(results["overlapped"]),
                     "sequential_img_s": statistics.median(results["sequential"]), "all": results})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup")
    m = sub.add_parser("models")
    m.add_argument("--rounds", type=int, default=3)
    m.add_argument("--iters", type=int, default=3)
    m.add_argument("--batch", type=int, default=8)
    m.add_argument("--model", action="append", choices=list(MODELS))
    m.add_argument("--dtype", action="append", choices=["fp32", "bf16"])
    e = sub.add_parser("embed")
    e.add_argument("--rounds", type=int, default=3)
    e.add_argument("--images", type=int, default=200)
    e.add_argument("--batch", type=int, default=16)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--model", action="append", choices=["PE-Core-T16-384", "PE-Core-B16-224"])
    w = sub.add_parser("worker")
    w.add_argument("impl")
    w.add_argument("model")
    w.add_argument("dtype")
    w.add_argument("batch", type=int)
    w.add_argument("iters", type=int)
    mw = sub.add_parser("make-weights")
    mw.add_argument("model")
    args = parser.parse_args()
    if args.command == "setup":
        setup()
    elif args.command == "make-weights":
        OUT.mkdir(exist_ok=True)
        print(make_weights(args.model))
    elif args.command == "worker":
        print(json.dumps(worker(args.impl, args.model, args.dtype, args.batch, args.iters)))
    elif args.command == "models":
        rows = bench_models(args.rounds, args.iters, args.batch, args.model or list(MODELS), args.dtype or ["fp32", "bf16"])
        print(f"machine: {machine()}")
        print("| model | dtype | batch | sensorium img/s | timm img/s | ratio | sensorium peak RSS MB | timm peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['sensorium_img_s']:.2f} | {r['timm_img_s']:.2f} | "
                  f"{r['speed_ratio']:.2f}x | {r['sensorium_peak_mb']:.0f} | {r['timm_peak_mb']:.0f} |")
        (OUT / "models.json").write_text(json.dumps(rows, indent=1))
    elif args.command == "embed":
        rows = bench_embed(args.rounds, args.images, args.batch, args.workers,
                           args.model or ["PE-Core-T16-384", "PE-Core-B16-224"])
        print(f"machine: {machine()}")
        print("| model | JPEGs (1920x1280) | batch | decode overlapped img/s | decode in main thread img/s | ratio |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['images']} | {r['batch']} | {r['overlapped_img_s']:.2f} ({r['workers']} workers) | "
                  f"{r['sequential_img_s']:.2f} | {r['overlapped_img_s'] / r['sequential_img_s']:.2f}x |")
        (OUT / "embed.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
