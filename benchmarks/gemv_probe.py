"""How fast can a one-row bf16 product stream its weight on this CPU? The decoders' bound (issue 14, item 4).

    python benchmarks/gemv_probe.py [--rounds 5]

sensorium's bf16 decode steps run oneDNN's product on a weight packed once (nn/linear.py): 34 GB/s in isolation on the
2-core Zen 4 here, against a 57 GB/s streaming read; llama.cpp's one-row kernels reach 38 GB/s inside a model. This
probe builds a plain C kernel (AVX512-BF16 dot products over the weight as stored, rows split across OpenMP threads;
`gcc -O3 -march=native`, no torch headers, loaded with ctypes) and times it beside oneDNN's on the same 256 MB
matrix, interleaved, medians; it checks the kernel's output against float32 first. A probe, not a sensorium code
path: it measures what a hand-written kernel would buy before one is worth building in.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import machine

SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>

/* y[n] = sum_k w[n, k] * x[k]: bf16 in, fp32 out; ROWS rows at a time share each load of x. */
#define ROWS 4
void gemv_bf16(const uint16_t *x, const uint16_t *w, float *y, int64_t n_rows, int64_t k) {
    #pragma omp parallel for schedule(static)
    for (int64_t block = 0; block < n_rows / ROWS; ++block) {
        const uint16_t *row = w + block * ROWS * k;
        __m512 acc[ROWS];
        for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_setzero_ps();
        for (int64_t i = 0; i < k; i += 32) {
            __m512bh xv = (__m512bh)_mm512_loadu_si512((const void *)(x + i));
            for (int r = 0; r < ROWS; ++r) {
                _mm_prefetch((const char *)(row + r * k + i + 512), _MM_HINT_T0);
                acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512((const void *)(row + r * k + i)), xv);
            }
        }
        for (int r = 0; r < ROWS; ++r) y[block * ROWS + r] = _mm512_reduce_add_ps(acc[r]);
    }
}
"""


def build() -> ctypes.CDLL:
    folder = Path(tempfile.mkdtemp(prefix="gemv-probe-"))
    (folder / "gemv.c").write_text(SOURCE)
    subprocess.run(["gcc", "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-o", str(folder / "gemv.so"),
                    str(folder / "gemv.c")], check=True)
    library = ctypes.CDLL(str(folder / "gemv.so"))
    library.gemv_bf16.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    return library


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    library = build()
    rows, k = 16384, 8192  # 256 MB of bf16 weights, as bound.py
    weight = torch.randn(rows, k).bfloat16()
    x = torch.randn(1, k).bfloat16()
    out = torch.empty(rows)

    def kernel():
        library.gemv_bf16(x.data_ptr(), weight.data_ptr(), out.data_ptr(), rows, k)
        return out

    packed = torch.ops.mkldnn._reorder_linear_weight(weight)
    sides = {
        "C kernel, AVX512-BF16, weight as stored": kernel,
        "oneDNN, packed weight (sensorium's bf16 decoders)": lambda: torch.ops.mkldnn._linear_pointwise(
            x, packed, None, "none", [], ""),
        "oneDNN, weight as stored": lambda: torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], ""),
    }
    expected = (x.float() @ weight.float().T)[0]
    error = ((kernel() - expected).norm() / expected.norm()).item()
    if not error < 1e-5:
        raise SystemExit(f"the kernel's output is {error:.1e} from float32's")
    data = torch.ones(1 << 28)
    sides["streaming read (sum of 1 GB fp32)"] = lambda: data.sum()
    size = {name: weight.numel() * 2 for name in sides} | {"streaming read (sum of 1 GB fp32)": data.numel() * 4}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sides[name]()
            sides[name]()
            times = []
            for _ in range(args.calls):
                start = time.perf_counter()
                sides[name]()
                times.append(time.perf_counter() - start)
            rates[name].append(size[name] / statistics.median(times) / 1e9)
    read = statistics.median(rates["streaming read (sum of 1 GB fp32)"])
    print(f"kernel vs float32: relative error {error:.1e}; threads: torch {torch.get_num_threads()}, OpenMP default")
    print("| one-row product over 16384 x 8192 bf16 (256 MB) | GB/s (median of rounds) | fraction of the read |")
    print("|---|---|---|")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"| {name} | {rate:.1f} ({', '.join(f'{v:.1f}' for v in values)}) | {100 * rate / read:.0f} % |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
