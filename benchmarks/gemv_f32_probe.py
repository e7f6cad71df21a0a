"""A float32 decoder's one-row products on this CPU: sensorium's float32 kernel (`sensorium_gemv_f32` in gemv_f32.c,
what a float32 decoder steps on where gemv.float32_steps says so) against oneDNN's float32 linear (what it stepped on
before, and does where the kernel is timed slower), torch's F.linear (MKL) and the same kernel with a software
prefetch ahead of its 4 rows (compiled here from the probe's own copy; the kernel has none because of this
measurement).

    python benchmarks/gemv_f32_probe.py [--rounds 7] [--layers 8]

The matrices: `--layers` copies of a Llama-1B layer's seven (q, k, v, o 2048 wide, gate and up 8192x2048, down
2048x8192; 232 MB a layer in float32), called in turn, so each comes from memory as in a step. Beside them a
streaming read of the same bytes (sum of each matrix). Sides interleaved, medians of the rounds; each side checked
against float64 first.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from common import interleaved, machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

LAYER = [(2048, 2048), (512, 2048), (512, 2048), (2048, 2048), (8192, 2048), (8192, 2048), (2048, 8192)]

# the kernel's one-row loop (gemv_avx2.c, F32_M(1)) with a prefetch `ahead` bytes in front of each of its 4 rows
PREFETCHING = r"""
#include <immintrin.h>
#include <stdint.h>
static inline float sum_8(__m256 v) {
    const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
}
void probe_gemv_f32_prefetch(const float *x, const float *w, float *y, int64_t n, int64_t k, int64_t ahead,
                             int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < n / 4; ++b) {
        __m256 acc[4];
        for (int r = 0; r < 4; ++r) acc[r] = _mm256_setzero_ps();
        for (int64_t i = 0; i < k; i += 8) {
            const __m256 xv = _mm256_loadu_ps(x + i);
            for (int r = 0; r < 4; ++r) {
                const float *row = w + (b * 4 + r) * k + i;
                if (i % 16 == 0) _mm_prefetch((const char *)row + ahead, _MM_HINT_T1);
                acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(row), xv, acc[r]);
            }
        }
        for (int r = 0; r < 4; ++r) y[b * 4 + r] = sum_8(acc[r]);
    }
}
"""


def main() -> None:
    import importlib

    gemv = importlib.import_module("sensorium.nn.gemv")

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    if not gemv.has("sensorium_gemv_f32"):
        raise SystemExit(f"no float32 one-row product in this machine's kernels ({gemv.flavour() or gemv.why_not()})")
    folder = Path(tempfile.mkdtemp(prefix="gemv-f32-probe-"))
    (folder / "probe.c").write_text(PREFETCHING)
    error = gemv.compile_library(gemv.find_compiler(), "avx2", [folder / "probe.c"], folder / "probe.so")
    if error:
        raise SystemExit(error)
    probe = ctypes.CDLL(str(folder / "probe.so"))
    probe.probe_gemv_f32_prefetch.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    threads = torch.get_num_threads()

    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, k, generator=generator) * 0.02 for _ in range(args.layers) for n, k in LAYER]
    xs = {k: torch.randn(1, k, generator=generator) for k in (2048, 8192)}
    outs = [torch.empty(1, w.shape[0]) for w in weights]
    total = sum(w.numel() * 4 for w in weights)

    def prefetching(ahead):
        def run():
            for w, out in zip(weights, outs):
                probe.probe_gemv_f32_prefetch(xs[w.shape[1]].data_ptr(), w.data_ptr(), out.data_ptr(), w.shape[0],
                                              w.shape[1], ahead, threads)
        return run

    def each(product):
        def run():
            for w in weights:
                product(xs[w.shape[1]], w)
        return run

    def read():
        for w in weights:
            w.sum()

    sides = {
        "sensorium's float32 kernel (no prefetch)": each(gemv.gemv),
        "oneDNN float32 linear": each(lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")),
        "torch F.linear (MKL)": each(F.linear),
        "the kernel + prefetch 1 KB ahead": prefetching(1024),
        "the kernel + prefetch 8 KB ahead": prefetching(8192),
        "streaming read (sum)": read,
    }
    with torch.inference_mode():
        for w in weights[:7]:  # every product against float64 (the probe's through its output buffer)
            x = xs[w.shape[1]]
            exact = (x.double() @ w.double().T)
            prefetched = torch.empty(1, w.shape[0])
            probe.probe_gemv_f32_prefetch(x.data_ptr(), w.data_ptr(), prefetched.data_ptr(), w.shape[0], w.shape[1],
                                          1024, threads)
            for got in (gemv.gemv(x, w), F.linear(x, w), prefetched):
                assert float((got.double() - exact).abs().max() / exact.abs().max()) < 1e-5
        times = interleaved(sides, args.rounds)
    kernel = statistics.median(times["sensorium's float32 kernel (no prefetch)"])
    print(f"machine: {machine()}; {args.layers} Llama-1B layers' float32 matrices ({total / 1e9:.2f} GB), one row, "
          f"{args.rounds} rounds")
    print("| side | ms (median) | GB/s | the kernel vs it |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median * 1e3:.1f} | {total / median / 1e9:.1f} | {median / kernel:.2f}x |")


if __name__ == "__main__":
    main()
