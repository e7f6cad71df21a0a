"""float32 products of many rows on this CPU: MKL's sgemm (torch's F.linear), oneDNN's linear on the plain weight
and on the weight packed once, at the shapes sensorium's models run prompts and encoders at; and what sensorium's
`linear` picks for a plain weight (nn/linear.py: the faster of oneDNN and MKL, timed once per shape).

    python benchmarks/float32_gemm.py [--rounds 7]

Why: which library is faster depends on the CPU (on 2 Zen 4 cores MKL reached ~40 % of oneDNN at 2048x2048, on 2
Zen 3 cores it beats oneDNN on plain weights at a float32 decoder's prompt shapes). Sides interleaved, medians of the
rounds (each the mean of two calls), GFLOP/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from common import interleaved, machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

# (what, rows, outputs, inputs): AF3's decoder prompt (Qwen2.5-0.5B, a 30 s clip's 779 tokens), AF3's audio encoder
# (1500 positions, 1280 wide), PerceptionLM-1B's decoder prompt (Llama-1B, one tile: ~300 tokens), PE-Core-B16 batch 8
SHAPES = [
    ("AF3 decoder q / o", 779, 896, 896), ("AF3 decoder gate / up", 779, 4864, 896),
    ("AF3 decoder down", 779, 896, 4864), ("AF3 encoder attention", 1500, 1280, 1280),
    ("AF3 encoder fc1", 1500, 5120, 1280), ("AF3 encoder fc2", 1500, 1280, 5120),
    ("Llama-1B q / o", 300, 2048, 2048), ("Llama-1B gate / up", 300, 8192, 2048), ("Llama-1B down", 300, 2048, 8192),
    ("PE-Core-B16 fc1", 1576, 3072, 768),
]


def main() -> None:
    from sensorium.nn.linear import faster_float32_library, linear

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    print(f"machine: {machine()}; float32, {rounds} rounds, GFLOP/s (medians)")
    print("| shape | rows | MKL (F.linear) | oneDNN, plain weight | oneDNN, packed weight | sensorium's pick | its rate "
          "| MKL vs oneDNN plain |")
    print("|---|---|---|---|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for what, rows, outputs, inputs in SHAPES:
            weight = torch.randn(outputs, inputs, generator=generator) * 0.02
            x = torch.randn(rows, inputs, generator=generator)
            packed = torch.ops.mkldnn._reorder_linear_weight(weight)
            faster_float32_library.clear()
            linear(x, weight)  # sensorium's first call: times both and keeps the faster
            pick = next(iter(faster_float32_library.values()))
            sides = {
                "mkl": lambda: F.linear(x, weight),
                "onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], ""),
                "packed": lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""),
                "sensorium": lambda: linear(x, weight),
            }
            times = interleaved(sides, rounds, calls=2)
            rate = {name: 2 * rows * outputs * inputs / statistics.median(values) / 1e9 for name, values in times.items()}
            print(f"| {what} {outputs}x{inputs} | {rows} | {rate['mkl']:.0f} | {rate['onednn']:.0f} | "
                  f"{rate['packed']:.0f} | {pick} | {rate['sensorium']:.0f} | {rate['mkl'] / rate['onednn']:.2f}x |")


if __name__ == "__main__":
    main()
