"""What every benchmark script shares."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """The CPU, its cores, torch and its threads, Python: the line each benchmark table is quoted with."""
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def count_flops(call) -> float:
    """FLOPs of `call()` by torch's FLOP counter, with sensorium's plain linears on F.linear (the counter knows
    aten's matmuls, not oneDNN's), formulas for its packed ones (oneDNN's op), for the CPU's fused attention kernel
    and for sensorium's bf16 attention kernel, which the counter lacks (it would miss attention: 4 % of
    PE-Core-B16's FLOPs, 21 % of AST's)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sensorium.nn import use_onednn

    def cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
        rows = 1
        for size in query[:-1]:
            rows *= size
        return 2 * rows * key[-2] * (query[-1] + value[-1])  # q @ k^T and p @ v

    def onednn_linear(x, weight, *args, out_shape=None, **kwargs) -> int:  # a packed weight stays on oneDNN
        rows = 1
        for size in x[:-1]:
            rows *= size
        return 2 * rows * weight[0] * weight[1]

    def kernel_attention(q, k, *args, out_shape=None, **kwargs) -> int:  # sensorium's bf16 kernel: [B, T, H * D]
        return 4 * q[0] * q[1] * k[1] * q[2]

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention,
               torch.ops.mkldnn._linear_pointwise: onednn_linear}
    if hasattr(torch.ops, "sensorium") and hasattr(torch.ops.sensorium, "attention_bf16"):
        mapping[torch.ops.sensorium.attention_bf16] = kernel_attention
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.inference_mode(), use_onednn(False), counter:
        call()
    return float(counter.get_total_flops())


def run_json(command: list[str], what: str) -> dict:
    """Run a worker process and return the JSON object its last stdout line holds; its stderr's tail when it fails."""
    import json
    import subprocess

    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{what} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's peak RSS. Not ru_maxrss: exec keeps that, so a worker's would start at its parent's peak."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def onnxruntime_forward(path):
    """A forward over an exported ONNX file on ONNX Runtime's CPU provider, every graph optimisation on: numpy in,
    the first output as a torch tensor out (run in the peer environment)."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {feed: x})[0])


def openvino_forward(module, example, dtype_name: str, throughput: bool):
    """(forward, batches per call) for OpenVINO converting a torch module itself (its PyTorch frontend) and compiling
    it for the CPU in `dtype_name` ("fp32" | "bf16"): the LATENCY hint, or THROUGHPUT with two batches in flight
    (the forward then answers two batches, and the caller counts both)."""
    import openvino as ov
    import torch

    converted = ov.convert_model(module, example_input=example)
    hint = {"fp32": "f32", "bf16": "bf16"}[dtype_name]
    mode = "THROUGHPUT" if throughput else "LATENCY"
    compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": mode})
    if not throughput:
        request = compiled.create_infer_request()
        return (lambda x: torch.from_numpy(request.infer({0: x})[0].copy())), 1
    queue = ov.AsyncInferQueue(compiled, 2)
    results = {}
    queue.set_callback(lambda request, slot: results.__setitem__(slot, request.get_output_tensor(0).data.copy()))

    def forward(x):
        queue.start_async({0: x}, 0)
        queue.start_async({0: x}, 1)
        queue.wait_all()
        return torch.from_numpy(results[0])
    return forward, 2


def time_forward(forward, inputs, iters: int, start: float):
    """(last output, seconds of each of `iters` timed calls, seconds from `start` to the end of the warm-up call):
    one warm-up call (for compiling runtimes: the compilation), then the timed ones, under inference mode."""
    import time

    import torch

    times = []
    with torch.inference_mode():
        out = forward(inputs)
        prepare_s = time.perf_counter() - start
        for _ in range(iters):
            began = time.perf_counter()
            out = forward(inputs)
            times.append(time.perf_counter() - began)
    return out, times, prepare_s


def streaming_data(huge_pages: bool = True):
    """1 GB of float32 ones to sum as the streaming-read bound: on 2 MB pages by default, as sensorium's bf16 decoders
    keep their weights (nn/memory.py; the sum runs ~1.1x faster there than on torch's 4 KB pages on a Zen 4)."""
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from sensorium.nn.memory import on_huge_pages

    data = torch.ones(1 << 28)
    return on_huge_pages(data) if huge_pages else data


def read_rate(data) -> float:
    """GB/s of one streaming read of `data` (streaming_data()): the median of 5 sums after one unmeasured. Timed
    beside each measurement, since this machine's bandwidth moves between two levels (~35 and ~65 GB/s on 2 MB
    pages) within minutes."""
    import statistics
    import time

    data.sum()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    return data.numel() * data.element_size() / statistics.median(times) / 1e9



def interleaved(sides: dict, rounds: int, calls: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each side, once a round for `rounds` rounds, the sides in turn (their order reversed every
    other round); each timing the mean of `calls` calls after one unmeasured call."""
    import time

    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
            sides[name]()
            began = time.perf_counter()
            for _ in range(calls):
                sides[name]()
            times[name].append((time.perf_counter() - began) / calls)
    return times
