/* Weight-only int4 one-row products (nn/quant.py's int4 layers, in sensorium's layout), in AVX2 + FMA: built into
   both flavours of the kernels (nn/gemv.py), so they run on every x86 CPU the kernels build for.

   Layout: per output row, its k inputs in runs of 64, each run 32 bytes = 8 little-endian dwords, dword l holding
   inputs l, 8 + l, .., 56 + l in its nibbles 0 .. 7 (q in 0..15); beside it, per row, [k / group, 2] bf16 (scale,
   zero): the weight is (q - 8) * scale + zero. Nibble t of the 8 dwords is inputs 8t .. 8t + 7 in order: masked in
   place it reads, as int32, q * 16^t, which converts to float32 exactly and multiplies x * 16^-t (x scaled once a
   call: exact, a power of two) into q * x with q * x's own rounding; the top nibble is shifted down instead (in place
   it would read as a negative int32). So 8 values cost an AND, a conversion and an FMA, no shuffle (on a 2-core Zen 3
   a shift more costs 1.2x). A row sums per group scale * sum(q x) + (zero - 8 scale) * sum(x), in float32, sum(x) per
   group worked out once a call, and rounds once to bf16. torch's int4 op (`_weight_int4pack_mm_for_cpu`) runs at about
   half this rate there, compute-bound well under the memory's. */

#include <immintrin.h>
#include <stdint.h>

#include "bf16.h"
#include "kernels.h"

#define PREFETCH_INT4 2048 /* bytes ahead of a row's stream (rows follow one another), into L1 */
#define CHAINS(M) ((M) == 1 ? 4 : (M) == 2 ? 2 : 1) /* independent sums a row of x: the FMA's latency hidden */

static inline float sum_8_int4(__m256 v) {
    const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
}

/* M rows of xs (x scaled as above, float32 [M, k]) against rows 0 .. n-1 of w, in groups of GROUP inputs (64 or
   128: a group's runs unrolled); xsums [M, k / GROUP]. A macro, not an inline function: the OpenMP region is outlined
   before inlining, which would leave M and GROUP unknown in it. */
#define INT4_ROWS(M, GROUP)                                                                                           \
    static void gemv_int4_m##M##_##GROUP(const float *xs, const float *xsums, const uint8_t *w,                       \
                                         const uint16_t *params, uint16_t *y, int64_t n, int64_t k, int threads) {    \
        const int64_t groups = k / GROUP;                                                                             \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                                             \
        for (int64_t row = 0; row < n; ++row) {                                                                       \
            const uint8_t *q = w + row * (k / 2);                                                                     \
            const uint16_t *p = params + row * groups * 2;                                                            \
            __m256 total[M];                                                                                          \
            float offsets[M];                                                                                         \
            for (int j = 0; j < M; ++j) total[j] = _mm256_setzero_ps(), offsets[j] = 0.0f;                            \
            for (int64_t g = 0; g < groups; ++g) {                                                                    \
                __m256 acc[M][CHAINS(M)];                                                                             \
                for (int j = 0; j < M; ++j)                                                                           \
                    for (int c = 0; c < CHAINS(M); ++c) acc[j][c] = _mm256_setzero_ps();                              \
                for (int run = 0; run < GROUP / 64; ++run) {                                                          \
                    const int64_t i = g * GROUP + run * 64;                                                           \
                    if (run % 2 == 0) _mm_prefetch((const char *)q + i / 2 + PREFETCH_INT4, _MM_HINT_T0);             \
                    const __m256i raw = _mm256_loadu_si256((const __m256i *)(q + i / 2));                             \
                    for (int t = 0; t < 8; ++t) {                                                                     \
                        const __m256i masked = t < 7 ? _mm256_and_si256(raw, _mm256_set1_epi32(15 << (4 * t)))        \
                                                     : _mm256_srli_epi32(raw, 28);                                    \
                        const __m256 qv = _mm256_cvtepi32_ps(masked);                                                 \
                        for (int j = 0; j < M; ++j)                                                                   \
                            acc[j][t % CHAINS(M)] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(xs + j * k + i + 8 * t),      \
                                                                    acc[j][t % CHAINS(M)]);                           \
                    }                                                                                                 \
                }                                                                                                     \
                const __m256 scale = _mm256_set1_ps(from_bf16(p[2 * g]));                                             \
                for (int j = 0; j < M; ++j) {                                                                         \
                    for (int width = CHAINS(M) / 2; width > 0; width /= 2)                                            \
                        for (int c = 0; c < width; ++c) acc[j][c] = _mm256_add_ps(acc[j][c], acc[j][c + width]);      \
                    total[j] = _mm256_fmadd_ps(scale, acc[j][0], total[j]);                                           \
                }                                                                                                     \
            }                                                                                                         \
            /* the (zero - 8 scale) * sum(x) terms, 8 groups a vector: a (scale, zero) pair is one dword, scale in its\
               low half (1.08x over adding them group by group, one process) */                                       \
            int64_t h = 0;                                                                                            \
            for (; h + 8 <= groups; h += 8) {                                                                         \
                const __m256i pairs = _mm256_loadu_si256((const __m256i *)(p + 2 * h));                               \
                const __m256 scales = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));                              \
                const __m256 zeros = _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32((int)0xffff0000u)));\
                const __m256 offset = _mm256_sub_ps(zeros, _mm256_mul_ps(_mm256_set1_ps(8.0f), scales));              \
                for (int j = 0; j < M; ++j)                                                                           \
                    offsets[j] += sum_8_int4(_mm256_mul_ps(offset, _mm256_loadu_ps(xsums + j * groups + h)));         \
            }                                                                                                         \
            for (; h < groups; ++h) {                                                                                 \
                const float scale = from_bf16(p[2 * h]), offset = from_bf16(p[2 * h + 1]) - 8.0f * scale;             \
                for (int j = 0; j < M; ++j) offsets[j] += offset * xsums[j * groups + h];                             \
            }                                                                                                         \
            for (int j = 0; j < M; ++j) y[j * n + row] = to_bf16(sum_8_int4(total[j]) + offsets[j]);                  \
        }                                                                                                             \
    }

#define INT4_M(M) INT4_ROWS(M, 64) INT4_ROWS(M, 128)
INT4_M(1)
INT4_M(2)
INT4_M(3)
INT4_M(4)

/* y [m, n] = x [m, k] (bf16) times the int4 weight above, float32 sums, one rounding to bf16 (a bias is the caller's:
   QuantizedLinear adds it after the rounding). group: 64 or 128, dividing k. xf: float32 scratch of m * k + m * k /
   group. 0, or -1 for what it does not take (m outside 1..4, another group). */
int sensorium_gemv_int4(const uint16_t *x, int64_t m, const uint8_t *w, const uint16_t *params, uint16_t *y,
                        int64_t n, int64_t k, int64_t group, float *xf, int threads) {
    if (m < 1 || m > 4 || (group != 64 && group != 128) || k % group) return -1;
    float *xsums = xf + m * k;
    for (int64_t j = 0; j < m; ++j)
        for (int64_t g = 0; g < k / group; ++g) {
            float sum = 0.0f;
            for (int64_t i = g * group; i < (g + 1) * group; ++i) {
                const float v = from_bf16(x[j * k + i]);
                const int t = (int)(i % 64) / 8;
                sum += v;
                xf[j * k + i] = t < 7 ? v * (1.0f / (float)(1 << (4 * t))) : v;  /* x * 16^-t */
            }
            xsums[j * (k / group) + g] = sum;
        }
    switch (m * 1000 + group) {
        case 1064: gemv_int4_m1_64(xf, xsums, w, params, y, n, k, threads); break;
        case 1128: gemv_int4_m1_128(xf, xsums, w, params, y, n, k, threads); break;
        case 2064: gemv_int4_m2_64(xf, xsums, w, params, y, n, k, threads); break;
        case 2128: gemv_int4_m2_128(xf, xsums, w, params, y, n, k, threads); break;
        case 3064: gemv_int4_m3_64(xf, xsums, w, params, y, n, k, threads); break;
        case 3128: gemv_int4_m3_128(xf, xsums, w, params, y, n, k, threads); break;
        case 4064: gemv_int4_m4_64(xf, xsums, w, params, y, n, k, threads); break;
        default: gemv_int4_m4_128(xf, xsums, w, params, y, n, k, threads); break;
    }
    return 0;
}

/* x rounded to bf16 (to nearest, ties to even; NaN kept), as float32 */
static inline __m256 round_bf16_8(__m256 x) {
    const __m256i bits = _mm256_castps_si256(x);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_and_si256(_mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))),
                                             _mm256_set1_epi32((int)0xffff0000u));
    const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);  /* NaN: its top half as it is (quiet or not) */
    return _mm256_blendv_ps(_mm256_castsi256_ps(rounded),
                            _mm256_castsi256_ps(_mm256_and_si256(bits, _mm256_set1_epi32((int)0xffff0000u))), nan);
}

/* The weight the product above multiplies by, for a prompt's GEMM: rows of bf16(bf16((q - 8) * scale) + zero), as
   QuantizedLinear.dequantized rounds with torch's bf16 ops (the same bits), written as bf16 (float32 0) or widened to
   float32 (1: for a CPU without native bf16, whose GEMM runs in float32). out: [n, k] in row order. */
void sensorium_int4_dequantize(const uint8_t *w, const uint16_t *params, void *out, int64_t n, int64_t k, int64_t group,
                               int float32, int threads) {
    const int64_t groups = k / group;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t row = 0; row < n; ++row) {
        const uint8_t *q = w + row * (k / 2);
        const uint16_t *p = params + row * groups * 2;
        for (int64_t run = 0; run < k / 64; ++run) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(q + run * 32));
            const int64_t g = run * 64 / group;
            const __m256 scale = _mm256_set1_ps(from_bf16(p[2 * g])), zero = _mm256_set1_ps(from_bf16(p[2 * g + 1]));
            for (int t = 0; t < 8; ++t) {
                const __m256i values = _mm256_and_si256(_mm256_srli_epi32(raw, 4 * t), _mm256_set1_epi32(15));
                const __m256 centred = _mm256_cvtepi32_ps(_mm256_sub_epi32(values, _mm256_set1_epi32(8)));
                const __m256 weight = round_bf16_8(_mm256_add_ps(round_bf16_8(_mm256_mul_ps(centred, scale)), zero));
                const int64_t at = row * k + run * 64 + 8 * t;  /* inputs 8t .. 8t + 7, in order */
                if (float32) {
                    _mm256_storeu_ps((float *)out + at, weight);
                } else {
                    const __m256i top = _mm256_srli_epi32(_mm256_castps_si256(weight), 16);
                    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(top),
                                                            _mm256_extracti128_si256(top, 1));
                    _mm_storeu_si128((__m128i *)((uint16_t *)out + at), packed);
                }
            }
        }
    }
}
