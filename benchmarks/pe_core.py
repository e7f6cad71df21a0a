"""PE-Core speed and memory: sensorium vs the runtimes a user could pick instead, on the same weights and inputs,
and `sensorium embed` end to end.

    python benchmarks/pe_core.py setup             # the peer venv (benchmarks/.venv-timm): timm, ONNX Runtime, OpenVINO
    python benchmarks/bound.py                     # the machine's GEMM and memory bounds (benchmarks/out/bound.json)
    python benchmarks/pe_core.py models            # image tower, batch 8, fp32 and bf16, B16-224 and L14-336:
                                                   # sensorium (oneDNN linears; -mkl: torch's F.linear; -openvino,
                                                   # -onnxruntime: its backend= option), timm eager,
                                                   # torch.compile(timm) with freezing, ONNX Runtime (torch.onnx
                                                   # export of timm's model), OpenVINO (its converter on timm's model)
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

from common import count_flops, machine, onnxruntime_forward, openvino_forward, peak_rss_mb, run_json, time_forward

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
    subprocess.run(pip + ["onnxruntime==1.32.0", "openvino==2026.4.1", "onnx", "onnxscript"], check=True)
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


IMPLS = ("sensorium", "sensorium-compile", "sensorium-mkl", "sensorium-openvino", "sensorium-onnxruntime",
         "sensorium-auto", "timm", "timm-compile", "onnxruntime", "openvino", "openvino-throughput")
PEERS = tuple(impl for impl in IMPLS if not impl.startswith("sensorium"))  # run in the peer environment
# which (impl, dtype) pairs exist: ONNX Runtime's CPU provider has no bf16 kernels for these models
PAIRS = {"fp32": ("sensorium", "sensorium-compile", "sensorium-mkl", "sensorium-openvino", "sensorium-onnxruntime",
                  "sensorium-auto", "timm", "onnxruntime", "openvino"),
         "bf16": ("sensorium", "sensorium-compile", "sensorium-mkl", "sensorium-openvino", "sensorium-auto", "timm",
                  "timm-compile", "openvino", "openvino-throughput")}
# sensorium-openvino / -onnxruntime: `backend=` (sensorium's own modules exported; the export is cached in
# ~/.cache/sensorium/exported, so only the first round's prepare_s includes it); sensorium-auto: the index's and the
# service's default, OpenVINO kept only if timed faster on the first batch (the choice cached beside the export)


def _timm_model(name: str, dtype):
    import timm
    from safetensors.torch import load_file

    model = timm.create_model(MODELS[name], pretrained=False)
    model.load_state_dict(load_file(OUT / f"{name}-random-timm.safetensors"))
    return model.eval().to(dtype)


def _onnx_file(name: str, batch: int, size: int) -> Path:
    """timm's model exported by torch.onnx (dynamo), fp32, batch fixed; made once and kept in benchmarks/out."""
    import torch

    path = OUT / f"{name}-b{batch}.onnx"
    if not path.exists():
        model = _timm_model(name, torch.float32)
        torch.onnx.export(model, (torch.zeros(batch, 3, size, size),), str(path), dynamo=True)
    return path


def worker(impl: str, name: str, dtype_name: str, batch: int, iters: int) -> dict:
    """One runtime on the same weights and pixels: images/s (median of `iters` timed calls after a warm-up),
    peak RSS, and the output (saved, so that the parent compares every runtime with timm fp32)."""
    import numpy as np
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    size = int(MODELS[name].rsplit("_", 1)[1])
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    prepare_s = 0.0
    start = time.perf_counter()
    if impl in ("timm", "timm-compile"):
        model = _timm_model(name, dtype)
        forward = model
        if impl == "timm-compile":  # inductor with frozen weights (constant-folded, prepacked for oneDNN)
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            forward = torch.compile(model)
        inputs = pixels.to(dtype)
    elif impl.startswith("sensorium"):
        sys.path.insert(0, str(HERE.parent / "src"))
        import sensorium as sn
        from sensorium.nn import use_onednn

        backend = impl.split("-")[1] if impl in ("sensorium-openvino", "sensorium-onnxruntime",
                                                  "sensorium-auto") else "torch"
        model = sn.load(OUT / f"{name}-random-timm.safetensors", config=name, device="cpu", dtype=dtype,
                        compile=impl == "sensorium-compile",  # compiled: inductor's cache in ~/.cache/sensorium
                        backend=backend)
        onednn = impl != "sensorium-mkl"

        def forward(x):  # pooled + projected, as timm's forward
            with use_onednn(onednn):
                return model.encode_image(x, normalize=False)
        inputs = pixels.to(dtype)
    elif impl == "onnxruntime":
        forward = onnxruntime_forward(_onnx_file(name, batch, size))
        inputs = pixels.numpy()
    else:  # OpenVINO converts timm's torch module itself (its PyTorch frontend), weights fp32
        forward, batches = openvino_forward(_timm_model(name, torch.float32), pixels, dtype_name,
                                            impl == "openvino-throughput")
        batch *= batches  # two in flight (the "2 requests"): images/s counts both
        inputs = pixels.numpy()
    loaded_rss = peak_rss_mb()
    out, times, prepare_s = time_forward(forward, inputs, iters, start)
    if impl in ("sensorium-openvino", "sensorium-onnxruntime") and not model.encode_image.runners:
        raise RuntimeError(f"{impl} ran eagerly: {model.encode_image.failures}")
    if impl == "sensorium-auto":  # which way the timed choice went (eager or OpenVINO)
        from sensorium.nn.exported import backend_choices

        print(f"  sensorium-auto {dtype_name}: {backend_choices(model)}", file=sys.stderr)
    np.save(OUT / f"out-{impl}-{name}-{dtype_name}.npy", out.float().numpy())
    return {
        "impl": impl, "model": name, "dtype": dtype_name, "batch": batch,
        "images_per_s": batch / statistics.median(times), "times": times, "prepare_s": prepare_s,
        "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": loaded_rss,
    }


def _python(impl: str) -> str:
    return str(TIMM_VENV / "bin" / "python") if impl in PEERS else sys.executable


def _run_worker(impl: str, *args: str) -> dict:
    return run_json([_python(impl), __file__, "worker", impl, *args], f"{impl} worker")


def flops_per_image(name: str) -> float:
    """The image tower's FLOPs for one image (torch's FLOP counter over sensorium's eager forward, batch 1,
    attention included)."""
    sys.path.insert(0, str(HERE.parent / "src"))
    import torch

    import sensorium as sn

    model = sn.load(OUT / f"{name}-random-timm.safetensors", config=name, device="cpu")
    return count_flops(lambda: model.encode_image(torch.zeros(1, 3, model.image_size, model.image_size),
                                                  normalize=False))


def bench_models(rounds: int, iters: int, batch: int, models: list[str], dtypes: list[str],
                 only: list[str] | None = None) -> list[dict]:
    """Every runtime of PAIRS on each model and dtype, the order rotated every round; medians; each output
    compared with timm fp32's on the same pixels before its speed counts."""
    import numpy as np

    from bound import gemm_bound

    OUT.mkdir(exist_ok=True)
    for name in models:
        if not (OUT / f"{name}-random-timm.safetensors").exists():
            subprocess.run([_python("timm"), __file__, "make-weights", name], check=True)
    bound = {dtype: gemm_bound(dtype) for dtype in ("fp32", "bf16")}
    rows = []
    for name in models:
        flops = flops_per_image(name)
        for dtype in ["fp32"] + [d for d in dtypes if d != "fp32"]:  # fp32 first: timm fp32 is the reference
            impls = tuple(i for i in PAIRS[dtype] if not only or i in only or i in ("timm", "sensorium"))
            if dtype not in dtypes:  # only the reference: timm fp32, its output and its speed (rounds as asked)
                impls = ("timm",)
            runs: dict[str, list[dict]] = {impl: [] for impl in impls}
            for r in range(rounds):
                order = impls[r % len(impls):] + impls[:r % len(impls)]
                for impl in order:
                    runs[impl].append(_run_worker(impl, name, dtype, str(batch), str(iters)))
                    print(f"  {name} {dtype} round {r + 1}/{rounds} {impl}: "
                          f"{runs[impl][-1]['images_per_s']:.2f} img/s", file=sys.stderr)
            reference = np.load(OUT / f"out-timm-{name}-fp32.npy")
            for impl in impls:
                out = np.load(OUT / f"out-{impl}-{name}-{dtype}.npy")[: len(reference)]
                speed = statistics.median(r["images_per_s"] for r in runs[impl])
                rows.append({
                    "model": name, "dtype": dtype, "impl": impl, "batch": batch, "rounds": rounds, "iters": iters,
                    "img_s": speed, "all_img_s": [r["images_per_s"] for r in runs[impl]],
                    "prepare_s": statistics.median(r["prepare_s"] for r in runs[impl]),
                    "peak_mb": statistics.median(r["peak_rss_mb"] for r in runs[impl]),
                    "max_err_vs_timm_fp32": float(np.abs(out - reference).max() / np.abs(reference).max()),
                    "gflop_s": speed * flops / 1e9, "fraction_of_bound": speed * flops / 1e9 / bound[dtype],
                    "bound_gflop_s": bound[dtype], "flops_per_image": flops,
                })
    timm_fp32 = {r["model"]: r["img_s"] for r in rows if r["impl"] == "timm" and r["dtype"] == "fp32"}
    for row in rows:
        row["vs_timm_fp32"] = row["img_s"] / timm_fp32[row["model"]]
        ours = next((r for r in rows if (r["model"], r["dtype"], r["impl"]) == (row["model"], row["dtype"], "sensorium")),
                    row)
        row["sensorium_vs_this"] = ours["img_s"] / row["img_s"]
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
    m.add_argument("--only", action="append", choices=IMPLS, help="runtimes to run (default: all; timm always)")
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
        rows = bench_models(args.rounds, args.iters, args.batch, args.model or list(MODELS), args.dtype or ["fp32", "bf16"],
                            args.only)
        print(f"machine: {machine()}")
        print("| model | dtype | runtime | img/s | vs timm fp32 | sensorium vs it | fraction of the GEMM bound | "
              "max error vs timm fp32 | setup s | peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['dtype']} | {r['impl']} | {r['img_s']:.2f} | {r['vs_timm_fp32']:.2f}x | "
                  f"{r['sensorium_vs_this']:.2f}x | {100 * r['fraction_of_bound']:.0f} % of {r['bound_gflop_s']:.0f} | "
                  f"{r['max_err_vs_timm_fp32']:.1e} | {r['prepare_s']:.1f} | {r['peak_mb']:.0f} |")
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
