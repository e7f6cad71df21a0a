"""bf16 convolutions on a CPU without native bf16 (AVX2: AMD Zen 2 / 3, most laptops' Intel cores) (issue 14).

    python benchmarks/conv_bf16.py [--rounds 3] [--skip-slow] [--part layers|towers]

There oneDNN refuses bf16 convolutions and torch's own bf16 convolution (im2col and a generic bf16 product) runs
instead; sensorium's Conv1d / Conv2d (nn/conv.py) run such a convolution in float32 and round once. Three ways on
every model family's convolution shapes, alternating within each round, medians: torch's bf16 convolution, sensorium's
bf16 convolution, and the same convolution in float32; then whole bf16 towers (PE-Core-B16's image tower on 8 images,
AST on 8 clips of fbank features: benchmarks/pe_core.py's and ast_tagging.py's random weights) with sensorium's
convolutions against the same model with torch's (`conv.BF16_NATIVE` switched in this process), and the tower in
float32, and PE-AV's audio codec (the DAC encoder, random weights, 1 s of sound). `--skip-slow` leaves out AF3's
1280-wide convolution and the codec (torch's bf16 takes ~17 s a call on the one, ~35 s on the other). On a CPU with
native bf16 the two bf16 sides are the same call: the script says so and stops.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import machine

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

# (what, functional, input shape, weight shape, keywords): each family's convolutions at the sizes a model runs
LAYERS = [
    ("PE-Core-B16 patch embedding, 8 images", F.conv2d, (8, 3, 224, 224), (768, 3, 16, 16), dict(stride=16)),
    ("AST patch embedding, 8 clips", F.conv2d, (8, 1, 128, 1024), (768, 1, 16, 16), dict(stride=10)),
    ("AF3 conv1, one 30 s window", F.conv1d, (1, 128, 3000), (1280, 128, 3), dict(padding=1)),
    ("AF3 conv2, one 30 s window", F.conv1d, (1, 1280, 3000), (1280, 1280, 3), dict(stride=2, padding=1)),
    ("DAC (PE-AV codec) first residual conv, 1 s at 48 kHz", F.conv1d, (1, 64, 48000), (64, 64, 7), dict(padding=3)),
    ("PE-AV patcher conv, 2 x 30 s", F.conv1d, (2, 1024, 750), (1024, 1024, 3), dict(padding=1)),
]
SLOW = "AF3 conv2, one 30 s window"


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def bench_layers(rounds: int, skip_slow: bool) -> None:
    from bound import gemm_bound
    from sensorium.nn import conv

    bound = gemm_bound("fp32")  # sensorium's bf16 convolution runs float32 inside
    print("| convolution | torch bf16 ms | sensorium bf16 ms | float32 ms | sensorium vs torch bf16 | sensorium vs float32 "
          f"| sensorium GFLOP/s, of the {bound:.0f} GFLOP/s float32 GEMM bound |")
    print("|---|---|---|---|---|---|---|")
    for what, functional, x_shape, w_shape, keywords in LAYERS:
        if skip_slow and what == SLOW:
            continue
        g = torch.Generator().manual_seed(0)
        x, weight = torch.randn(x_shape, generator=g), torch.randn(w_shape, generator=g) * 0.05
        bias = torch.randn(w_shape[0], generator=g)
        layer = (conv.Conv1d if functional is F.conv1d else conv.Conv2d)(
            w_shape[1], w_shape[0], w_shape[2:], **keywords).requires_grad_(False)
        layer.weight.copy_(weight), layer.bias.copy_(bias)
        ours = layer.bfloat16()
        xb, wb, bb = x.bfloat16(), weight.bfloat16(), bias.bfloat16()
        sides = {"torch bf16": lambda: functional(xb, wb, bb, **keywords), "sensorium bf16": lambda: ours(xb),
                 "float32": lambda: functional(x, weight, bias, **keywords)}
        with torch.inference_mode():
            assert torch.allclose(sides["sensorium bf16"]().float(), sides["torch bf16"]().float(), rtol=2e-2, atol=2e-2)
            for call in sides.values():
                call()  # warm-up
            times = {side: [] for side in sides}
            for _ in range(rounds):
                for side, call in sides.items():
                    times[side].append(timed(call))
        ms = {side: statistics.median(t) * 1e3 for side, t in times.items()}
        # a multiply and an add per output and input channel and kernel tap
        flops = 2 * sides["float32"]().numel() * w_shape[1] * math.prod(w_shape[2:])
        rate = flops / ms["sensorium bf16"] / 1e6
        print(f"| {what} | {ms['torch bf16']:.1f} | {ms['sensorium bf16']:.1f} | {ms['float32']:.1f} | "
              f"{ms['torch bf16'] / ms['sensorium bf16']:.1f}x | {ms['float32'] / ms['sensorium bf16']:.2f}x | "
              f"{rate:.0f} ({rate / bound:.0%}) |", flush=True)


def bench_towers(rounds: int, skip_slow: bool) -> None:
    import numpy as np

    import sensorium as sn
    from sensorium.nn import conv

    out = HERE / "out"
    towers = []
    pe_weights = out / "PE-Core-B16-224-random-timm.safetensors"
    if pe_weights.exists():
        pixels = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        models = {d: sn.load(pe_weights, config="PE-Core-B16-224", device="cpu", dtype=d, backend="torch")
                  for d in (torch.bfloat16, torch.float32)}
        towers.append(("PE-Core-B16-224 image tower, 8 images", 8,
                       {d: (lambda m=m, d=d: m.encode_image(pixels.to(d), normalize=False)) for d, m in models.items()}))
    else:
        print(f"(no {pe_weights.name}: `python benchmarks/pe_core.py models` writes it)")
    features = out / "ast-features-b8.npy"
    if (out / "ast-audioset-random").exists() and features.exists():
        fbank = torch.from_numpy(np.load(features))
        models = {d: sn.load(out / "ast-audioset-random", device="cpu", dtype=d, backend="torch")
                  for d in (torch.bfloat16, torch.float32)}
        towers.append(("AST on fbank features, 8 clips", len(fbank),
                       {d: (lambda m=m, d=d: m.classify(fbank.to(d))) for d, m in models.items()}))
    else:
        print("(no AST weights or features: `python benchmarks/ast_tagging.py models` writes them)")
    if not skip_slow:
        from sensorium.models.dac import DacConfig, DacEncoder

        torch.manual_seed(0)
        codec = DacEncoder(DacConfig()).eval().requires_grad_(False)
        for name, parameter in codec.named_parameters():  # Snake's alpha near 1, as trained codecs have it
            parameter.uniform_(0.5, 1.5) if name.endswith("alpha") else parameter.normal_(0, 0.05)
        sound = torch.randn(1, 1, 48000, generator=torch.Generator().manual_seed(2)) * 0.1
        codecs = {torch.float32: codec, torch.bfloat16: copy.deepcopy(codec).bfloat16()}
        towers.append(("PE-AV audio codec (DAC encoder), 1 s at 48 kHz", 1,
                       {d: (lambda m=m, d=d: m(sound.to(d))) for d, m in codecs.items()}))
    if not towers:
        return
    print("\n| bf16 tower | items/s, torch's bf16 convolutions | items/s, sensorium's | float32 items/s | sensorium vs "
          "torch's convolutions (per round) | bf16 vs float32 |")
    print("|---|---|---|---|---|---|")
    native = conv.BF16_NATIVE

    def with_torch_convolutions(call):
        conv.BF16_NATIVE = True  # nn/conv.py's switch: torch's bf16 convolution, as before it
        try:
            return call()
        finally:
            conv.BF16_NATIVE = native

    for what, items, calls in towers:
        sides = {"torch": lambda c=calls[torch.bfloat16]: with_torch_convolutions(c),
                 "sensorium": calls[torch.bfloat16], "float32": calls[torch.float32]}
        with torch.inference_mode():
            for call in sides.values():
                call()
            times = {side: [] for side in sides}
            for _ in range(rounds):
                for side, call in sides.items():
                    times[side].append(timed(call))
        rate = {side: items / statistics.median(t) for side, t in times.items()}
        per_round = statistics.median(a / b for a, b in zip(times["torch"], times["sensorium"]))
        print(f"| {what} | {rate['torch']:.2f} | {rate['sensorium']:.2f} | {rate['float32']:.2f} | "
              f"{rate['sensorium'] / rate['torch']:.2f}x ({per_round:.2f}x) | {rate['sensorium'] / rate['float32']:.2f}x |",
              flush=True)


def main() -> None:
    from sensorium.nn import conv

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-slow", action="store_true",
                        help=f"leave out {SLOW} and the codec (torch's bf16: ~17 and ~35 s a call)")
    parser.add_argument("--part", choices=["layers", "towers"], action="append", help="one part (default: both)")
    args = parser.parse_args()
    print(machine())
    if conv.BF16_NATIVE:
        raise SystemExit("this CPU has native bf16: oneDNN runs bf16 convolutions and sensorium's are the same call")
    parts = args.part or ["layers", "towers"]
    if "layers" in parts:
        bench_layers(args.rounds, args.skip_slow)
    if "towers" in parts:
        bench_towers(args.rounds, args.skip_slow)


if __name__ == "__main__":
    main()
