"""int4 prompts on a CPU: the int4 kernel's integer GEMM against the dequantized weight's float32 GEMM (issue 14).

    python benchmarks/int4_gemm.py [--rounds 5]

A prompt on int4 layers (sensorium's layout) where the CPU has no native bf16 runs `gemv.gemm_int4`: every row of x
rounded to int8 per run of 64 inputs, integer products, blocks of weight rows against all of x. Before, it
dequantized the weight into float32 and ran oneDNN's float32 GEMM (QuantizedLinear's path, `dequantized` +
`linear_on_float32_weight`). Both sides on the same QuantizedLinear, Llama-1B's three shapes, 64 and 256 rows; the
two alternate within each round, medians; the GEMM is checked against the one-row kernel (the same bits) first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from common import machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

SHAPES = [(2048, 2048), (8192, 2048), (2048, 8192)]  # Llama-1B's q/o, gate/up, down (outputs x inputs)


def main() -> None:
    from sensorium.nn import gemv
    from sensorium.nn.linear import linear_on_float32_weight
    from sensorium.nn.quant import QuantizedLinear

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not gemv.has("sensorium_gemm_int4"):
        raise SystemExit(f"the int4 kernel is not available here: {gemv.why_not()}")
    print(f"machine: {machine()}; medians of {args.rounds} interleaved rounds")
    print("| weight | rows | int4 GEMM ms | GFLOP/s | dequantized + float32 GEMM ms | ratio |")
    print("|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for n, k in SHAPES:
        layer = QuantizedLinear.from_weight("int4", torch.randn(n, k) * 0.05, None)
        widened = torch.empty(n, k)
        for rows in (64, 256):
            x = torch.randn(rows, k).bfloat16()
            sides = {"gemm": lambda: gemv.gemm_int4(x, layer.qweight, layer.scales, layer.group),
                     "dequantized": lambda: linear_on_float32_weight(x, layer.dequantized(widened), None, "none")}
            steps = [gemv.gemv_int4(x[i : i + 4], layer.qweight, layer.scales, layer.group) for i in range(0, rows, 4)]
            if not torch.equal(sides["gemm"](), torch.cat(steps)):
                raise SystemExit("the int4 GEMM differs from the one-row kernel")
            times = {name: [] for name in sides}
            with torch.inference_mode():
                for r in range(args.rounds + 1):  # the first round warms up
                    for name, run in (sides.items() if r % 2 else reversed(sides.items())):
                        start = time.perf_counter()
                        run()
                        if r:
                            times[name].append(time.perf_counter() - start)
            gemm, dequantized = statistics.median(times["gemm"]), statistics.median(times["dequantized"])
            print(f"| {n} x {k} | {rows} | {1e3 * gemm:.1f} | {2 * rows * n * k / gemm / 1e9:.0f} | "
                  f"{1e3 * dequantized:.1f} | {dequantized / gemm:.2f}x |")


if __name__ == "__main__":
    main()
