"""A bf16 linear with many rows (an encoder's block, a prompt) on this CPU: torch's own bf16 product, sensorium's
`linear`, and the same product in float32.

    python benchmarks/bf16_linear.py [--rounds 5]

Where the CPU has native bf16 (AVX512-BF16 or AMX; `sensorium.nn.linear.BF16_NATIVE`), sensorium's bf16 linear is
oneDNN's bf16 product. Where it has not (AVX2 CPUs: AMD Zen 2 / 3, most laptops' Intel cores) oneDNN refuses bf16,
torch multiplies bf16 row by row, and sensorium widens the weight to float32 per call and runs oneDNN's float32
product (one rounding at the end; nn/linear.py's `_bf16_through_float32`). Shapes: PE-Core-B16's qkv-sized and MLP
linears and Llama-1B's square and MLP ones, at 16 to 1576 rows (a batch of 8 images at B16-224 is 1576). Sides
interleaved within each round; medians; every side checked against float64 first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

SHAPES = [(768, 768), (3072, 768), (2048, 2048), (8192, 2048)]
ROWS = [16, 64, 256, 1576]


def main() -> None:
    from sensorium.nn.linear import BF16_NATIVE, linear

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}; native bf16 in oneDNN: {BF16_NATIVE}")
    print("| weight | rows | torch bf16 (F.linear) ms | sensorium bf16 (`linear`) ms | float32 (`linear`) ms | "
          "sensorium bf16 vs torch bf16 | vs float32 | sensorium bf16 GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for n, k in SHAPES:
        weight, bias = torch.randn(n, k, generator=g).bfloat16(), torch.randn(n, generator=g).bfloat16()
        wide, wide_bias = weight.float(), bias.float()
        for rows in ROWS:
            x = torch.randn(rows, k, generator=g).bfloat16()
            sides = {"torch": lambda: F.linear(x, weight, bias), "sensorium": lambda: linear(x, weight, bias),
                     "float32": lambda xf=x.float(): linear(xf, wide, wide_bias)}
            exact = x.double() @ weight.double().T + bias.double()
            with torch.inference_mode():
                for name, side in sides.items():
                    error = float((side().double() - exact).abs().max() / exact.abs().max())
                    if not error < 1e-2:
                        raise SystemExit(f"{name} at {n}x{k}, {rows} rows: {error:.1e} from float64")
                times: dict[str, list[float]] = {name: [] for name in sides}
                repeats = max(1, int(2e9 / (2 * rows * n * k)))  # ~2 GFLOP a timing
                for r in range(args.rounds):
                    names = list(sides)[r % 3:] + list(sides)[:r % 3]
                    for name in names:
                        start = time.perf_counter()
                        for _ in range(repeats):
                            sides[name]()
                        times[name].append((time.perf_counter() - start) / repeats)
            med = {name: statistics.median(values) for name, values in times.items()}
            print(f"| {n}x{k} | {rows} | {1e3 * med['torch']:.2f} | {1e3 * med['sensorium']:.2f} | "
                  f"{1e3 * med['float32']:.2f} | {med['torch'] / med['sensorium']:.2f}x | "
                  f"{med['float32'] / med['sensorium']:.2f}x | {2 * rows * n * k / med['sensorium'] / 1e9:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
