/* int4 one-row products (nn/quant.py's int4 layers, in sensorium's layout), in AVX2: built into both flavours of the
   kernels (nn/gemv.py), so they run on every x86 CPU the kernels build for.

   Layout: per output row, its k inputs in runs of 64, each run 32 bytes = 8 little-endian dwords, dword l holding
   inputs l, 8 + l, .., 56 + l in its nibbles 0 .. 7 (q in 0..15); beside it, per row, [k / group, 2] bf16 (scale,
   zero): the weight is (q - 8) * scale + zero. So byte b of dword l holds inputs 8 (2b) + l (low nibble) and
   8 (2b + 1) + l (high): one AND gives 32 weights as bytes, a shift and an AND the other 32, no shuffle.

   The activations are rounded to int8 per run of 64 inputs (scale max|x| / 127, to nearest, ties to even), as
   llama.cpp rounds its Q4_0 products' to Q8_0 per 32: then 32 products are one vpmaddubsw (unsigned weight bytes
   times signed activation bytes, pairs summed exactly in 16 bits), and a run costs ~10 instructions where products
   in float32 cost 24 (an AND, a conversion and an FMA per 8): on 2 Zen 3 cores 1.6-1.8x the float32 form, which
   was compute-bound at about half the memory's rate (a Llama-1B int4 decode 1.56x). A row sums per group
       scale * sum_runs(xscale * sum(q * xq)) + zero * sum(x) - 8 scale * sum_runs(xscale * sum(xq)),
   the integer sums exact, the rest in float32, one rounding to bf16: the error against the float32 product is the
   activations' rounding alone, s (q - 8) * (x - xscale xq), at most half an activation step per input (sum(x) is
   exact, so the zero's term carries none of it; a NaN or infinite x gives NaN through it). */

#include <immintrin.h>
#include <stdint.h>

#include "bf16.h"
#include "kernels.h"

#define PREFETCH_INT4 2048 /* bytes ahead of a row's stream (rows follow one another), into L1 */
#define INT4_RUN 64        /* inputs a run: 32 bytes of weights, 64 of activations, one activation scale */

static inline float sum_8_int4(__m256 v) {
    const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
}

static inline float max_8_int4(__m256 v) {
    const __m128 half = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 pair = _mm_max_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_max_ss(pair, _mm_movehdup_ps(pair)));
}

/* 4 int32 vectors of values in -127..127, lanes l: the dwords whose byte b is a[b][l] */
static inline __m256i bytes_of_4(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
    const __m256i byte = _mm256_set1_epi32(0xff);
    const __m256i low = _mm256_or_si256(_mm256_and_si256(a0, byte), _mm256_slli_epi32(_mm256_and_si256(a1, byte), 8));
    return _mm256_or_si256(low, _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(a2, byte), 16),
                                                _mm256_slli_epi32(a3, 24)));
}

/* Row x [k] (bf16) for the products below: xq [k] int8 in the weights' byte order (per run, 32 bytes for the low
   nibbles' inputs, then 32 for the high ones'), xscale [k / 64], and per group xsum = sum(x) and xhat = the sum of
   the rounded activations (xscale * xq). */
static void int4_activations(const uint16_t *x, int64_t k, int64_t group, int8_t *xq, float *xscale, float *xsum,
                             float *xhat) {
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t g = 0; g < k / group; ++g) xsum[g] = 0.0f, xhat[g] = 0.0f;
    for (int64_t run = 0; run < k / INT4_RUN; ++run) {
        __m256 v[8], largest = _mm256_setzero_ps(), total = _mm256_setzero_ps();
        for (int t = 0; t < 8; ++t) {  /* v[t]: inputs 8t .. 8t + 7 of the run */
            const __m128i raw = _mm_loadu_si128((const __m128i *)(x + run * INT4_RUN + 8 * t));
            v[t] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
            largest = _mm256_max_ps(largest, _mm256_and_ps(v[t], magnitude));
            total = _mm256_add_ps(total, v[t]);
        }
        const float top = max_8_int4(largest), scale = top / 127.0f;
        const __m256 inverse = _mm256_set1_ps(top > 0.0f ? 127.0f / top : 0.0f);
        __m256i q[8];
        __m256 rounded_total = _mm256_setzero_ps();
        for (int t = 0; t < 8; ++t) {
            const __m256 rounded = _mm256_round_ps(_mm256_mul_ps(v[t], inverse),
                                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            rounded_total = _mm256_add_ps(rounded_total, rounded);
            q[t] = _mm256_cvttps_epi32(rounded);
        }
        _mm256_storeu_si256((__m256i *)(xq + run * INT4_RUN), bytes_of_4(q[0], q[2], q[4], q[6]));
        _mm256_storeu_si256((__m256i *)(xq + run * INT4_RUN + 32), bytes_of_4(q[1], q[3], q[5], q[7]));
        xscale[run] = scale;
        const int64_t g = run * INT4_RUN / group;
        xsum[g] += sum_8_int4(total);
        xhat[g] += scale * sum_8_int4(rounded_total);
    }
}

/* Weight row `row` of w against M rows of activations (int4_activations' xq [M, k], xscale [M, k / 64], xsum and
   xhat [M, k / GROUP]), in groups of GROUP inputs (64 or 128): y[j * n + row]
   for j < M. One function per (M, GROUP), made by a macro, so that both are constants inside it (an OpenMP region
   around an inline function taking them would be outlined before they are known). */
#define INT4_ROW(M, GROUP)                                                                                            \
    static void int4_row_m##M##_##GROUP(const int8_t *xq, const float *xscale, const float *xsum,                    \
                                        const float *xhat, const uint8_t *w, const uint16_t *params, uint16_t *y,    \
                                        int64_t row, int64_t n, int64_t k) {                                          \
        const int64_t groups = k / GROUP, runs = k / INT4_RUN;                                                        \
        const uint8_t *q = w + row * (k / 2);                                                                         \
        const uint16_t *p = params + row * groups * 2;                                                                \
        const __m256i nibble = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);                                     \
        __m256 total[M];                                                                                              \
        float offsets[M];                                                                                             \
        for (int j = 0; j < M; ++j) total[j] = _mm256_setzero_ps(), offsets[j] = 0.0f;                                \
        for (int64_t g = 0; g < groups; ++g) {                                                                        \
            __m256 acc[M];                                                                                            \
            for (int j = 0; j < M; ++j) acc[j] = _mm256_setzero_ps();                                                 \
            for (int run = 0; run < GROUP / INT4_RUN; ++run) {                                                        \
                const int64_t r = g * (GROUP / INT4_RUN) + run;                                                       \
                if (r % 2 == 0) _mm_prefetch((const char *)q + r * 32 + PREFETCH_INT4, _MM_HINT_T0);                  \
                const __m256i raw = _mm256_loadu_si256((const __m256i *)(q + r * 32));                                \
                const __m256i low = _mm256_and_si256(raw, nibble);                                                    \
                const __m256i high = _mm256_and_si256(_mm256_srli_epi16(raw, 4), nibble);                             \
                for (int j = 0; j < M; ++j) {                                                                         \
                    const int8_t *a = xq + j * k + r * INT4_RUN;                                                      \
                    /* pairs of products in 16 bits: at most 2 * 2 * 15 * 127 = 7620 */                               \
                    const __m256i pairs = _mm256_add_epi16(                                                           \
                        _mm256_maddubs_epi16(low, _mm256_loadu_si256((const __m256i *)a)),                            \
                        _mm256_maddubs_epi16(high, _mm256_loadu_si256((const __m256i *)(a + 32))));                   \
                    const __m256 sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));                           \
                    acc[j] = _mm256_fmadd_ps(sums, _mm256_broadcast_ss(xscale + j * runs + r), acc[j]);               \
                }                                                                                                     \
            }                                                                                                         \
            const __m256 scale = _mm256_set1_ps(from_bf16(p[2 * g]));                                                 \
            for (int j = 0; j < M; ++j) total[j] = _mm256_fmadd_ps(scale, acc[j], total[j]);                          \
        }                                                                                                             \
        /* zero * sum(x) - 8 scale * xhat, 8 groups a vector: a (scale, zero) pair is one dword, scale in its low half \
         */                                                                                                           \
        int64_t h = 0;                                                                                                \
        for (; h + 8 <= groups; h += 8) {                                                                             \
            const __m256i pairs = _mm256_loadu_si256((const __m256i *)(p + 2 * h));                                   \
            const __m256 scales = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));                                  \
            const __m256 zeros = _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32((int)0xffff0000u)));   \
            const __m256 eights = _mm256_mul_ps(_mm256_set1_ps(8.0f), scales);                                        \
            for (int j = 0; j < M; ++j)                                                                               \
                offsets[j] += sum_8_int4(_mm256_sub_ps(_mm256_mul_ps(zeros, _mm256_loadu_ps(xsum + j * groups + h)),  \
                                                       _mm256_mul_ps(eights, _mm256_loadu_ps(xhat + j * groups + h))));\
        }                                                                                                             \
        for (; h < groups; ++h) {                                                                                     \
            const float scale = from_bf16(p[2 * h]), zero = from_bf16(p[2 * h + 1]);                                  \
            for (int j = 0; j < M; ++j)                                                                               \
                offsets[j] += zero * xsum[j * groups + h] - 8.0f * scale * xhat[j * groups + h];                      \
        }                                                                                                             \
        for (int j = 0; j < M; ++j) y[j * n + row] = to_bf16(sum_8_int4(total[j]) + offsets[j]);                      \
    }

#define INT4_M(M) INT4_ROW(M, 64) INT4_ROW(M, 128)
INT4_M(1)
INT4_M(2)
INT4_M(3)
INT4_M(4)

typedef void (*int4_row_fn)(const int8_t *, const float *, const float *, const float *, const uint8_t *,
                            const uint16_t *, uint16_t *, int64_t, int64_t, int64_t);

static int4_row_fn int4_row(int64_t m, int64_t group) {  /* 1 <= m <= 4; group 64 or 128 */
    static const int4_row_fn rows[4][2] = {{int4_row_m1_64, int4_row_m1_128}, {int4_row_m2_64, int4_row_m2_128},
                                           {int4_row_m3_64, int4_row_m3_128}, {int4_row_m4_64, int4_row_m4_128}};
    return rows[m - 1][group == 128];
}

/* The activations of rows 0 .. m-1 of x in scratch: xq [m, k] int8, then floats xscale [m, k / 64], xsum and xhat
   [m, k / group]. */
typedef struct {
    int8_t *xq;
    float *xscale, *xsum, *xhat;
} int4_inputs;

static int4_inputs int4_prepare(const uint16_t *x, int64_t m, int64_t k, int64_t group, float *scratch, int threads) {
    int4_inputs in;
    in.xq = (int8_t *)scratch;
    in.xscale = (float *)(in.xq + m * k), in.xsum = in.xscale + m * (k / INT4_RUN), in.xhat = in.xsum + m * (k / group);
    #pragma omp parallel for schedule(static) num_threads(threads) if (m > 16)
    for (int64_t j = 0; j < m; ++j)
        int4_activations(x + j * k, k, group, in.xq + j * k, in.xscale + j * (k / INT4_RUN), in.xsum + j * (k / group),
                         in.xhat + j * (k / group));
    return in;
}

/* y [m, n] = x [m, k] (bf16, rounded to int8 per run of 64 as above) times the int4 weight above, one rounding to
   bf16 (a bias is the caller's: QuantizedLinear adds it after the rounding). group: 64 or 128, dividing k. scratch:
   at least m * k bytes + m * (k / 64 + 2 * k / group) floats (the callers give m * (k + k / group) floats). 0, or -1
   for what it does not take (m outside 1..4, another group). */
int sensorium_gemv_int4(const uint16_t *x, int64_t m, const uint8_t *w, const uint16_t *params, uint16_t *y,
                        int64_t n, int64_t k, int64_t group, float *scratch, int threads) {
    if (m < 1 || m > 4 || (group != 64 && group != 128) || k % group) return -1;
    const int4_inputs in = int4_prepare(x, m, k, group, scratch, threads);
    const int4_row_fn row_of = int4_row(m, group);
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t row = 0; row < n; ++row) row_of(in.xq, in.xscale, in.xsum, in.xhat, w, params, y, row, n, k);
    return 0;
}

#define INT4_GEMM_ROWS 16 /* weight rows a task: 16 x k / 2 bytes, read again from cache for each 4 rows of x */

/* The same product for any number of rows m (a prompt): every row of x rounded as above (so a prompt's outputs are
   the step's, row for row, bit for bit), then blocks of INT4_GEMM_ROWS weight rows, each against all of x, 4 rows
   at a time: the weights stream from memory once, x from cache. On 2 Zen 3 cores (no native bf16) 1.4-1.9x the
   dequantized weight's float32 GEMM on oneDNN, ~160 GFLOP/s (nn/quant.py takes it there). scratch: as above for m
   rows. 0, or -1 (another group). */
int sensorium_gemm_int4(const uint16_t *x, int64_t m, const uint8_t *w, const uint16_t *params, uint16_t *y,
                        int64_t n, int64_t k, int64_t group, float *scratch, int threads) {
    if (m < 1 || (group != 64 && group != 128) || k % group) return -1;
    const int4_inputs in = int4_prepare(x, m, k, group, scratch, threads);
    const int64_t runs = k / INT4_RUN, groups = k / group, blocks = (n + INT4_GEMM_ROWS - 1) / INT4_GEMM_ROWS;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t block = 0; block < blocks; ++block) {
        const int64_t first = block * INT4_GEMM_ROWS, last = first + INT4_GEMM_ROWS < n ? first + INT4_GEMM_ROWS : n;
        for (int64_t j = 0; j < m; j += 4) {
            const int64_t rows = m - j < 4 ? m - j : 4;
            const int4_row_fn row_of = int4_row(rows, group);
            for (int64_t row = first; row < last; ++row)
                row_of(in.xq + j * k, in.xscale + j * runs, in.xsum + j * groups, in.xhat + j * groups, w, params,
                       y + j * n, row, n, k);
        }
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
