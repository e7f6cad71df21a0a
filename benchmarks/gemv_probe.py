"""How fast does a one-row bf16 product stream its weight on this CPU? The decoders' bound (issue 14, item 4).

    python benchmarks/gemv_probe.py [--rounds 5]

A decoder's one-token step reads every weight once for one row of activations, so its linears run at the speed the
weight streams from memory. This times sensorium's one-row kernel (src/sensorium/nn/gemv_bf16.c: AVX512-BF16 dot
products, or gemv_avx2.c on a CPU without them; what bf16 decoders step on where it builds), on the weight in its
blocks of rows (what the loader lays a decoder's weights out in) and as stored, beside oneDNN's product on the weight
packed once (the fallback) and as stored, or where oneDNN has no bf16 (AVX2 CPUs) torch's own bf16 product and the
float32 product on the same weights widened (a float32 decoder's step: twice the bytes, so compare G weights/s), on
three shapes of ~256 MB of bf16 weights each: one
16384x8192 matrix, a 151,672-token vocabulary head 896 wide (Qwen2.5-0.5B's: short rows), and 30 copies of a
4864x896 MLP matrix called in turn (a layer's weights come from memory, not from cache, as in a step). The
weights and the streaming read (sum of 1 GB of fp32) sit on 2 MB pages, as a bf16 decoder's weights do. Sides
interleaved, medians of the rounds, the read in the same run; every side checked against float64 first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from common import machine, streaming_data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

SHAPES = {"16384 x 8192": (16384, 8192, 1), "head 151672 x 896": (151672, 896, 1), "30 x MLP 4864 x 896": (4864, 896, 30)}


def main() -> None:
    from sensorium.nn import gemv
    from sensorium.nn.linear import BF16_NATIVE
    from sensorium.nn.memory import on_huge_pages

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if not gemv.available():
        raise SystemExit(f"sensorium's one-row kernel is not available here: {gemv.why_not()}")
    data = streaming_data()
    sides, size, weights_of = {"streaming read (sum of 1 GB fp32)": lambda call: data.sum()}, {}, {}
    size["streaming read (sum of 1 GB fp32)"] = data.numel() * 4
    for shape, (rows, k, copies) in SHAPES.items():
        # on 2 MB pages, as a bf16 decoder's weights are (nn/memory.py); oneDNN packs into memory of its own
        weights = [on_huge_pages(torch.randn(rows, k).bfloat16()) for _ in range(copies)]
        blocked = [on_huge_pages(gemv.to_blocks(w)) for w in weights] if rows % 4 == 0 and k % 32 == 0 else None
        x = torch.randn(1, k).bfloat16()
        exact = x.double() @ weights[0].double().T
        mine = {
            f"sensorium kernel ({gemv.flavour()}), blocks of rows": lambda call, w=blocked, x=x: gemv.gemv(x, w[call % len(w)]),
            f"sensorium kernel ({gemv.flavour()}), weight as stored": lambda call, w=weights, x=x: gemv.gemv(x, w[call % len(w)]),
        }
        if BF16_NATIVE:
            packed = [torch.ops.mkldnn._reorder_linear_weight(w) for w in weights]
            mine["oneDNN, packed weight"] = lambda call, p=packed, x=x: torch.ops.mkldnn._linear_pointwise(
                x, p[call % len(p)], None, "none", [], "")
            mine["oneDNN, weight as stored"] = lambda call, w=weights, x=x: torch.ops.mkldnn._linear_pointwise(
                x, w[call % len(w)], None, "none", [], "")
        else:  # no bf16 in oneDNN here: torch's own bf16 product, and the float32 decoder's (MKL's sgemv, 4 bytes a weight)
            mine["torch's bf16 product (F.linear)"] = lambda call, w=weights, x=x: torch.nn.functional.linear(
                x, w[call % len(w)])
            wide = [on_huge_pages(w.float()) for w in weights]
            mine["float32 weight (F.linear: MKL)"] = lambda call, w=wide, x=x.float(): torch.nn.functional.linear(
                x, w[call % len(w)])
        for name, side in mine.items():
            if blocked is None and "blocks" in name:
                continue
            error = float((side(0).double() - exact).abs().max() / exact.abs().max())
            if not error < 1e-2:
                raise SystemExit(f"{name} at {shape}: {error:.1e} from float64")
            sides[f"{shape}: {name}"] = side
            size[f"{shape}: {name}"] = rows * k * (4 if "float32" in name else 2)
            weights_of[f"{shape}: {name}"] = rows * k
    rates: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            side = sides[name]
            side(0)
            times = []
            for call in range(args.calls):
                start = time.perf_counter()
                side(call + 1)
                times.append(time.perf_counter() - start)
            rates[name].append(size[name] / statistics.median(times) / 1e9)
    read = statistics.median(rates["streaming read (sum of 1 GB fp32)"])
    print(f"threads: torch {torch.get_num_threads()}; {args.rounds} rounds, median of {args.calls} calls each")
    print("| one-row product (~128 M weights) | GB/s (median; rounds) | fraction of the read | G weights/s |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        rate = statistics.median(values)
        per_weight = f"{rate * weights_of[name] / size[name]:.1f}" if name in weights_of else "-"
        print(f"| {name} | {rate:.1f} ({', '.join(f'{v:.1f}' for v in values)}) | {100 * rate / read:.0f} % | "
              f"{per_weight} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
