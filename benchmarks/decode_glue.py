"""What a bf16 decode step costs besides streaming its weights: a 24-layer decoder only 128 wide (its weights stay
in cache, so a step is all glue: Python, small ops, calls), three ways, interleaved, medians.

    python benchmarks/decode_glue.py [--rounds 5] [--tokens 40]

- the one-row kernel with the step's other parts in C too (sensorium's default where the kernel builds),
- the kernel for the linears only, torch's ops around them (RMSNorm, RoPE, attention, SwiGLU's silu and multiply),
- no kernel: oneDNN on the plain weights, torch's ops.
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


def main() -> None:
    from sensorium.nn import gemv, stream_linears
    from sensorium.nn.decoder import Decoder, DecoderConfig
    from sensorium.nn.generation import generate_tokens

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=40)
    args = parser.parse_args()
    if not gemv.available():
        raise SystemExit(f"the one-row kernel is not available here: {gemv.why_not()}")
    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=1000, width=128, layers=24, heads=4, kv_heads=2, mlp_hidden=352,
                           max_positions=4096)
    decoder = Decoder(config).bfloat16().eval().requires_grad_(False)
    stream_linears(decoder)
    embeds, mask = torch.randn(1, 700, 128).bfloat16(), torch.ones(1, 700, dtype=torch.long)
    fused = (gemv.fit_all, gemv.rms_norm_fits, gemv.swiglu_hidden)

    def kernel_linears_only():
        gemv.fit_all = lambda x, layers: False  # q/k/v, RoPE and attention: torch's ops
        gemv.rms_norm_fits = lambda x, weight: False
        gemv.swiglu_hidden = lambda x, gate, up: F.silu(gemv.gemv(x, gate)) * gemv.gemv(x, up)

    sides = {"kernel, step in C": lambda: None, "kernel for the linears, torch's ops": kernel_linears_only,
             "oneDNN on plain weights, torch's ops": lambda: None}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name in list(sides)[r % 3:] + list(sides)[:r % 3]:
            gemv.fit_all, gemv.rms_norm_fits, gemv.swiglu_hidden = fused
            sides[name]()
            with torch.inference_mode(), gemv.use_gemv(not name.startswith("oneDNN")):
                stamps = [time.perf_counter() for _ in generate_tokens(decoder, embeds, mask, args.tokens)]
            times[name].append(statistics.median(b - a for a, b in zip(stamps, stamps[1:])))
    gemv.fit_all, gemv.rms_norm_fits, gemv.swiglu_hidden = fused
    print(f"machine: {machine()}; {config.layers} layers, {config.width} wide, 700 cached positions")
    print("| step | ms (median; rounds) |")
    print("|---|---|")
    for name, values in times.items():
        print(f"| {name} | {1000 * statistics.median(values):.2f} ({', '.join(f'{1000 * v:.2f}' for v in values)}) |")


if __name__ == "__main__":
    main()
