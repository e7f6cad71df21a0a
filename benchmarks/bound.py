"""The machine's bounds: GEMM rate per library and dtype, and memory bandwidth, so that every benchmark row can say
what fraction of the hardware it reaches.

    python benchmarks/bound.py              # this machine: prints a table, writes benchmarks/out/bound.json
    python benchmarks/bound.py --size 4096  # a larger square GEMM

CPU: torch's F.linear (MKL sgemm in float32 on x86, oneDNN in bfloat16), oneDNN's linear (torch.ops.mkldnn, what
sensorium's layers call), float16 where torch has a fast path, ONNX Runtime's and OpenVINO's MatMul (in the peer
environment, benchmarks/.venv-timm: `python benchmarks/pe_core.py setup`); memory: a large copy (read + write) and
a streaming read (on 4 KB and on 2 MB pages), and GEMVs (the decoder's bound: one pass over the weights per token) in fp32, bf16 (plain and
packed for oneDNN; sensorium's one-row kernel) and the int8/int4 weight-only kernels (sensorium's and torch's). GPU (when one is present):
cuBLAS bf16 and fp16 GEMM, TF32, and a device copy (HBM). Every rate is the median of repeated calls after two
warm-ups.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
PEER_PYTHON = HERE / ".venv-timm" / "bin" / "python"


def seconds(fn, repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_bounds(size: int, repeats: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE.parent / "src"))
    from sensorium.nn import gemv
    from sensorium.nn.linear import BF16_NATIVE, linear

    torch.manual_seed(0)
    flops = 2 * size**3
    rates: dict[str, float] = {}
    with torch.inference_mode():
        a, w = torch.randn(size, size), torch.randn(size, size)
        rates["torch F.linear fp32 GFLOP/s"] = flops / seconds(lambda: F.linear(a, w), repeats) / 1e9
        ab, wb = a.bfloat16(), w.bfloat16()
        if hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available():
            rates["oneDNN linear fp32 GFLOP/s"] = flops / seconds(
                lambda: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], ""), repeats) / 1e9
            if BF16_NATIVE:  # oneDNN refuses bf16 on CPUs without AVX512 (BW/VL/DQ) or AVX-NE-CONVERT
                rates["oneDNN linear bf16 GFLOP/s"] = flops / seconds(
                    lambda: torch.ops.mkldnn._linear_pointwise(ab, wb, None, "none", [], ""), repeats) / 1e9
            else:  # sensorium's bf16 linear there: float32 inside, the weight widened per call (nn/linear.py)
                rates["sensorium linear bf16 (float32 inside) GFLOP/s"] = flops / seconds(
                    lambda: linear(ab, wb), repeats) / 1e9
        rates["torch F.linear bf16 GFLOP/s"] = flops / seconds(lambda: F.linear(a.bfloat16(), w.bfloat16()), repeats) / 1e9
        small = 512  # float16 on CPUs without AVX512-FP16 falls back to a scalar loop: measure small, not for long
        ah, wh = torch.randn(small, small).half(), torch.randn(small, small).half()
        rates["torch F.linear fp16 GFLOP/s"] = 2 * small**3 / seconds(lambda: F.linear(ah, wh), 3) / 1e9
        rates["copy GB/s (read + write)"] = copy_rate(repeats)
        weight32 = torch.randn(8192, 8192)  # 256 MB of fp32 weights, one token (fp32 decoding)
        x32 = torch.randn(1, 8192)
        rates["fp32 GEMV GB/s (oneDNN)"] = weight32.numel() * 4 / seconds(
            lambda: torch.ops.mkldnn._linear_pointwise(x32, weight32, None, "none", [], ""), repeats) / 1e9
        rates["fp32 GEMV GB/s (torch F.linear)"] = weight32.numel() * 4 / seconds(
            lambda: F.linear(x32, weight32), repeats) / 1e9
        weight32 = None
        weight = torch.randn(16384, 8192).bfloat16()  # 256 MB of bf16 weights, one token
        x = torch.randn(1, 8192).bfloat16()
        if BF16_NATIVE:
            rates["bf16 GEMV GB/s (oneDNN)"] = weight.numel() * 2 / seconds(
                lambda: torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], ""), repeats) / 1e9
            packed = torch.ops.mkldnn._reorder_linear_weight(weight)  # sensorium's bf16 decoders (nn/linear.py)
            rates["bf16 GEMV GB/s (oneDNN, packed weight)"] = weight.numel() * 2 / seconds(
                lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), repeats) / 1e9
            packed = None  # 256 MB freed before the next measurement
        else:
            rates["bf16 GEMV GB/s (torch F.linear)"] = weight.numel() * 2 / seconds(
                lambda: F.linear(x, weight), repeats) / 1e9
        if gemv.available():  # sensorium's bf16 decoders where it builds (nn/gemv.py)
            rates["bf16 GEMV GB/s (sensorium's one-row kernel)"] = weight.numel() * 2 / seconds(
                lambda: gemv.gemv(x, weight), repeats) / 1e9
            from sensorium.nn.memory import on_huge_pages

            weight = on_huge_pages(weight)  # as a bf16 decoder's weights are (nn/linear.py's stream_linears)
            rates["bf16 GEMV GB/s (sensorium's one-row kernel, 2 MB pages)"] = weight.numel() * 2 / seconds(
                lambda: gemv.gemv(x, weight), repeats) / 1e9
            blocked = on_huge_pages(gemv.to_blocks(weight))  # the layout the loader gives a decoder's weights
            rates["bf16 GEMV GB/s (sensorium's one-row kernel, blocks of rows, 2 MB pages)"] = (
                weight.numel() * 2 / seconds(lambda: gemv.gemv(x, blocked), repeats) / 1e9)
            blocked = None
        rates |= weight_only_rates(weight, x, repeats)
        rates["read GB/s (sum of 1 GB)"] = read_rate(repeats)
        rates["read GB/s (sum of 1 GB on 2 MB pages)"] = read_rate(repeats, huge_pages=True)
        rates["read GB/s (best of sum, GEMV)"] = max(
            rates["read GB/s (sum of 1 GB)"], rates["read GB/s (sum of 1 GB on 2 MB pages)"],
            rates["fp32 GEMV GB/s (oneDNN)"], rates.get("bf16 GEMV GB/s (sensorium's one-row kernel)", 0.0),
            rates.get("bf16 GEMV GB/s (sensorium's one-row kernel, 2 MB pages)", 0.0),
            rates.get("bf16 GEMV GB/s (sensorium's one-row kernel, blocks of rows, 2 MB pages)", 0.0))
        if torch.cuda.is_available():
            rates |= cuda_bounds(size * 4, repeats)
    return rates


def read_rate(repeats: int, huge_pages: bool = False) -> float:
    """A streaming read: the sum of 1 GB of float32 (one pass, nothing written), on 4 KB pages (torch's allocator
    here) or on 2 MB pages (where sensorium's bf16 decoders keep their weights: nn/memory.py)."""
    from common import streaming_data

    data = streaming_data(huge_pages)
    return data.numel() * 4 / seconds(lambda: data.sum(), repeats) / 1e9


def weight_only_rates(weight, x, repeats: int) -> dict[str, float]:
    """The quantized decoders' one-row kernels on the same 16384x8192 matrix (sensorium's int8/int4 decoders):
    sensorium's where they build (int8 weight-only; int4 on activations rounded to int8, nn/gemv_int4.c), and torch's
    weight-only ones (quantized with sensorium's kernels off), as GB/s of the weight bytes they stream (int8: 1 byte a
    weight; int4: half, its scales not counted)."""
    import sys

    sys.path.insert(0, str(HERE.parent / "src"))
    from sensorium.nn import gemv
    from sensorium.nn.quant import QuantizedLinear, available

    rates = {}
    for mode, size in (("int8", 1.0), ("int4", 0.5)):
        if not available(mode):
            continue
        for ours in ((True, False) if gemv.available() else (False,)):
            with gemv.use_gemv(ours):
                layer = QuantizedLinear.from_weight(mode, weight.float())
                name = "sensorium's kernel" if ours else "torch's weight-only kernel"
                if ours and mode == "int4":
                    name += ", activations rounded to int8"
                rates[f"{mode} GEMV GB/s of weights ({name})"] = weight.numel() * size / seconds(
                    lambda: layer(x), repeats) / 1e9
    return rates


def copy_rate(repeats: int) -> float:
    import torch

    source = torch.empty(512 * 1024 * 1024 // 4)  # 512 MB: far past every cache
    target = torch.empty_like(source)
    return 2 * source.numel() * 4 / seconds(lambda: target.copy_(source), repeats) / 1e9


def cuda_bounds(size: int, repeats: int) -> dict[str, float]:
    import torch

    def timed(fn) -> float:
        fn()
        torch.cuda.synchronize()
        events = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in events) / 1000

    rates = {"gpu": torch.cuda.get_device_name()}
    flops = 2 * size**3
    for dtype, label in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        a, b = torch.randn(size, size, device="cuda", dtype=dtype), torch.randn(size, size, device="cuda", dtype=dtype)
        rates[f"cuBLAS {label} TFLOP/s"] = flops / timed(lambda: a @ b) / 1e12
    a, b = torch.randn(size, size, device="cuda"), torch.randn(size, size, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    rates["cuBLAS tf32 TFLOP/s"] = flops / timed(lambda: a @ b) / 1e12
    torch.backends.cuda.matmul.allow_tf32 = False
    big = torch.empty(1 << 30, device="cuda", dtype=torch.uint8)
    dst = torch.empty_like(big)
    rates["HBM copy GB/s (read + write)"] = 2 * big.numel() / timed(lambda: dst.copy_(big)) / 1e9
    return rates


def peer_bounds(size: int, repeats: int) -> dict[str, float]:
    """ONNX Runtime and OpenVINO on one MatMul with a constant weight (run in the peer environment)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    w = rng.standard_normal((size, size), dtype=np.float32)
    flops = 2 * size**3
    rates: dict[str, float] = {}
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rates[f"ONNX Runtime {ort.__version__} MatMul fp32 GFLOP/s"] = flops / seconds(
        lambda: session.run(None, {"a": a}), repeats) / 1e9
    import openvino as ov
    from openvino import opset13 as ops

    param = ops.parameter([size, size], np.float32, name="a")
    core = ov.Core()
    ov_model = ov.Model([ops.matmul(param, ops.constant(w), False, False)], [param])
    for hint, label in (("f32", "fp32"), ("bf16", "bf16")):
        compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        rates[f"OpenVINO {ov.__version__.split('-')[0]} MatMul {label} GFLOP/s"] = flops / seconds(
            lambda: request.infer({0: a}), repeats) / 1e9
    return rates


def measure(size: int, repeats: int, peers: bool = True) -> dict:
    result = {"machine": machine(), "size": size, "rates": torch_bounds(size, repeats)}
    if peers and PEER_PYTHON.exists():
        run = subprocess.run([str(PEER_PYTHON), __file__, "peers", "--size", str(size), "--repeats", str(repeats)],
                             capture_output=True, text=True)
        if run.returncode:
            result["peers_error"] = run.stderr[-2000:]
        else:
            result["rates"] |= json.loads(run.stdout.strip().splitlines()[-1])
    elif peers:
        result["peers_error"] = f"{PEER_PYTHON} missing: run `python benchmarks/pe_core.py setup` for the peers"
    return result


def load() -> dict:
    """The last measured bounds (benchmarks/out/bound.json), measuring them first when there are none."""
    path = OUT / "bound.json"
    if not path.exists():
        OUT.mkdir(exist_ok=True)
        path.write_text(json.dumps(measure(2048, 10), indent=1))
    return json.loads(path.read_text())


def gemm_bound(dtype: str) -> float:
    """The fastest library's measured GEMM rate, GFLOP/s, for "fp32" / "float32" or "bf16" / "bfloat16"."""
    short = {"float32": "fp32", "bfloat16": "bf16"}.get(dtype, dtype)
    return max(v for k, v in load()["rates"].items() if f"{short} GFLOP/s" in k)


def read_bound() -> float | None:
    """The measured read bandwidth, GB/s: the faster of a streaming sum and a one-row product (None in a file
    written before it was measured)."""
    return load()["rates"].get("read GB/s (best of sum, GEMV)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", nargs="?", default="all", choices=["all", "peers"])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="whole measurements; the table gives their medians")
    args = parser.parse_args()
    if args.command == "peers":
        print(json.dumps(peer_bounds(args.size, args.repeats)))
        return
    runs = [measure(args.size, args.repeats) for _ in range(args.rounds)]
    rates = {key: statistics.median(r["rates"][key] for r in runs if key in r["rates"])
             for key in runs[0]["rates"] if not isinstance(runs[0]["rates"][key], str)}
    result = {**runs[0], "rates": rates, "rounds": args.rounds, "all": [r["rates"] for r in runs]}
    OUT.mkdir(exist_ok=True)
    (OUT / "bound.json").write_text(json.dumps(result, indent=1))
    print(f"machine: {result['machine']}; GEMM {args.size}x{args.size}x{args.size}; medians of {args.rounds} rounds")
    print("| what | rate |")
    print("|---|---|")
    for key, value in rates.items():
        print(f"| {key} | {value:.1f} |")
    if "peers_error" in result:
        print(result["peers_error"], file=sys.stderr)


if __name__ == "__main__":
    main()
