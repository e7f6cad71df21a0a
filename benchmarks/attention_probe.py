"""How fast is an encoder's bf16 self-attention on this CPU? The part of a bf16 encoder its linears do not explain
(issue 14, item 3).

    python benchmarks/attention_probe.py [--rounds 7]

Times sensorium's attention kernel (src/sensorium/nn/attention_bf16.c: q, k and v read in place from the fused
projection's output, RoPE applied as it packs them, AVX512-BF16 tiles) against what ran before it and what timm
runs: RoPE in float32 with apply_rope_pairs, SDPA's CPU flash kernel on [B, H, T, D] views, and the transpose back
to [B, T, H * D]; at three encoders' shapes, batch as in the encoder benchmarks: PE-Core-B16-224 (batch 8, 197
tokens, 12 heads of 64, RoPE), PE-Core-L14-336 (batch 2, 577 tokens, 16 heads, RoPE), AST (batch 8, 1214 tokens,
12 heads, no RoPE). Sides interleaved, medians of the rounds; each side checked against float64 first (held to
within 1.25x SDPA's own error); GFLOP/s counts the two products (4 B H T² D) against the bf16 GEMM bound of
benchmarks/bound.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import bound
from common import machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

SHAPES = {  # name: batch, tokens, heads, head width, RoPE grid (None: no RoPE)
    "PE-Core-B16-224": (8, 197, 12, 64, 14),
    "PE-Core-L14-336": (2, 577, 16, 64, 24),
    "AST (1214 tokens)": (8, 1214, 12, 64, None),
}


def main() -> None:
    from sensorium.nn import gemv
    from sensorium.nn.attention import attention_on_kernel
    from sensorium.nn.rope import apply_rope_pairs, rope_2d_angles, rope_tables

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if not gemv.available():
        raise SystemExit(f"sensorium's bf16 kernels are not available here: {gemv.why_not()}")
    gemm = bound.gemm_bound("bf16")

    def torch_path(qkv, heads, rope):
        batch, tokens, width3 = qkv.shape
        x = qkv.view(batch, tokens, 3, heads, width3 // 3 // heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope_pairs(x[:2], *rope).unbind(0) if rope is not None else (x[0], x[1])
        return F.scaled_dot_product_attention(q, k, x[2]).transpose(1, 2).reshape(batch, tokens, width3 // 3)

    def kernel_path(qkv, heads, rope):
        q, k, v = qkv.unflatten(-1, (3, -1)).unbind(2)
        return attention_on_kernel(q, k, v, heads, rope)

    sides = {"SDPA flash kernel (+ RoPE, transpose)": torch_path, "sensorium kernel": kernel_path}
    print(f"threads: torch {torch.get_num_threads()}; {args.rounds} rounds, sides interleaved; bf16 GEMM bound "
          f"{gemm:.0f} GFLOP/s (benchmarks/out/bound.json)")
    print("| shape | side | ms (median; rounds) | GFLOP/s | fraction of the GEMM bound | kernel vs SDPA |")
    print("|---|---|---|---|---|---|")
    for shape, (batch, tokens, heads, dim, grid) in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        qkv = torch.randn(batch, tokens, 3 * heads * dim, generator=g).bfloat16()
        rope = rope_tables(rope_2d_angles(dim, grid, grid, 1)) if grid else None
        exact = torch_path(qkv.double(), heads, rope)
        errors = {name: float((side(qkv, heads, rope).double() - exact).abs().max()) for name, side in sides.items()}
        if not errors["sensorium kernel"] <= 1.25 * errors["SDPA flash kernel (+ RoPE, transpose)"] + 1e-6:
            raise SystemExit(f"{shape}: the kernel is {errors} from float64")
        times: dict[str, list[float]] = {name: [] for name in sides}
        names = list(sides)
        for r in range(args.rounds):
            for name in names[r % 2:] + names[:r % 2]:
                start = time.perf_counter()
                sides[name](qkv, heads, rope)
                times[name].append(time.perf_counter() - start)
        flop = 4 * batch * heads * tokens * tokens * dim
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, values in times.items():
            rate = flop / medians[name] / 1e9
            ratio = medians[names[0]] / medians[name]
            print(f"| {shape} | {name} | {1e3 * medians[name]:.1f} ({', '.join(f'{1e3 * v:.1f}' for v in values)}) "
                  f"| {rate:.0f} | {100 * rate / gemm:.0f} % | {ratio:.2f}x |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
