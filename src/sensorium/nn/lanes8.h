/* The float32 helpers on 8 lanes (AVX2 + FMA) that more than one file of sensorium's kernels uses: gemv_avx2.c (the
   avx2 build's bf16 and int8 kernels) and gemv_f32.c (float32 decoders' kernels, in both builds). */

#ifndef SENSORIUM_LANES8_H
#define SENSORIUM_LANES8_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

static inline float sum_8(__m256 v) {
    const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
}

/* The one-row products with float32 sums over weights widened 8 at a time (int8, float32): blocks of 4 rows split
   across threads, x as float32 [M, k], WIDEN_8 / WIDEN_1 the weights at w + offset as float32, PREFETCH run every 16
   inputs, STORE(r, j, total) each output's float32 sum (the last k % 8 added one by one). The function takes
   (x, w, the kernel's own arguments, n, k, threads). */
#define FLOAT32_SUMS(NAME, M, WEIGHT, WIDEN_8, WIDEN_1, PREFETCH, STORE, ...)                                       \
    static void NAME##_m##M(const float *x, const WEIGHT *w, __VA_ARGS__, int64_t n, int64_t k, int threads) {      \
        const int64_t blocks = (n + ROWS - 1) / ROWS;                                                             \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                                        \
        for (int64_t b = 0; b < blocks; ++b) {                                                                    \
            const int64_t first = b * ROWS;                                                                       \
            const int rows = n - first < ROWS ? (int)(n - first) : ROWS;                                          \
            __m256 acc[ROWS][M];                                                                                  \
            float tail[ROWS][M];                                                                                  \
            for (int r = 0; r < ROWS; ++r)                                                                        \
                for (int j = 0; j < M; ++j) acc[r][j] = _mm256_setzero_ps(), tail[r][j] = 0.0f;                   \
            int64_t i = 0;                                                                                        \
            for (; i + 8 <= k; i += 8) {                                                                          \
                __m256 xv[M];                                                                                     \
                for (int j = 0; j < M; ++j) xv[j] = _mm256_loadu_ps(x + j * k + i);                               \
                if (i % 16 == 0) PREFETCH((const char *)(w + first * k) + ROWS * sizeof(WEIGHT) * i);              \
                for (int r = 0; r < rows; ++r) {                                                                  \
                    const __m256 wv = WIDEN_8(w + (first + r) * k + i);                                           \
                    for (int j = 0; j < M; ++j) acc[r][j] = _mm256_fmadd_ps(wv, xv[j], acc[r][j]);                \
                }                                                                                                 \
            }                                                                                                     \
            for (; i < k; ++i)                                                                                    \
                for (int r = 0; r < rows; ++r)                                                                    \
                    for (int j = 0; j < M; ++j) tail[r][j] += WIDEN_1(w[(first + r) * k + i]) * x[j * k + i];     \
            for (int r = 0; r < rows; ++r)                                                                        \
                for (int j = 0; j < M; ++j) STORE(r, j, sum_8(acc[r][j]) + tail[r][j]);                          \
        }                                                                                                         \
    }

/* e^x for 8 lanes, bf16.h's exp_16 (the same reduction and polynomial) without AVX-512's scalef: 2^n built in the
   exponent bits, so results under FLT_MIN (x < -87.3) are 0 where exp_16 keeps subnormals, and x > 88.7 is inf */
static inline __m256 exp_8(__m256 x) {
    const __m256 low = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33f), _CMP_LT_OQ);
    const __m256 high = _mm256_cmp_ps(x, _mm256_set1_ps(88.72f), _CMP_GT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33f)), _mm256_set1_ps(88.72f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-06f), r);
    __m256 p = _mm256_set1_ps(1.38294208e-03f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.37477110e-03f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.16683592e-02f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.66664213e-01f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.99999911e-01f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* 2^n as two factors (n up to 128 and down to -126 each stay normal) */
    const __m256i e = _mm256_cvtps_epi32(n);
    const __m256i half = _mm256_srai_epi32(e, 1);
    const __m256 a = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, _mm256_set1_epi32(127)), 23));
    const __m256 b = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(e, half),
                                                                            _mm256_set1_epi32(127)), 23));
    p = _mm256_mul_ps(_mm256_mul_ps(p, a), b);
    p = _mm256_andnot_ps(low, p);
    return _mm256_blendv_ps(p, _mm256_set1_ps(INFINITY), high);
}

static inline __m256 silu_8(__m256 a) {  /* a / (1 + e^-a) */
    return _mm256_div_ps(a, _mm256_add_ps(_mm256_set1_ps(1.0f), exp_8(_mm256_sub_ps(_mm256_setzero_ps(), a))));
}

/* A row of scores -> e^(score - best) in place (masked -inf ones 0), 8 at a time; their sum (a step's softmax before
   the division, in STEP_ATTENTION) */
static inline float exponentials(float *row, int64_t visible, float best) {
    const __m256 most = _mm256_set1_ps(best);
    __m256 sums = _mm256_setzero_ps();
    int64_t s = 0;
    for (; s + 8 <= visible; s += 8) {
        const __m256 x = _mm256_loadu_ps(row + s);
        const __m256 kept = _mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_NEQ_OQ);
        const __m256 e = _mm256_and_ps(kept, exp_8(_mm256_sub_ps(x, most)));
        _mm256_storeu_ps(row + s, e);
        sums = _mm256_add_ps(sums, e);
    }
    float total = sum_8(sums);
    for (; s < visible; ++s) {  /* the same exp, a lane at a time */
        float lane[8];
        _mm256_storeu_ps(lane, exp_8(_mm256_set1_ps(row[s] - best)));
        row[s] = row[s] == -INFINITY ? 0.0f : lane[0];
        total += row[s];
    }
    return total;
}

#define IDENTITY(v) (v)


/* A decode step's attention over a layer's cache, as gemv_bf16.c's (few_query_attention's math: float32 scores,
   softmax and weighted sum in float32, one rounding to T at the end): each score a dot product (DOT), the
   exponentials 8 at a time, the weighted sum 8 channels at a time in one pass over the values per 32 channels (LOAD_8
   and STORE_8 the values' and the output's 8 channels as float32, WIDEN_1 / NARROW_1 one value). bf16 for bf16
   decoders; float32 for float32 ones (decoder_step_f32.c). */
#define STEP_ATTENTION(NAME, T, DOT, LOAD_8, STORE_8, WIDEN_1, NARROW_1)                                           \
    void NAME(const T *q, const T *keys, const T *values, const uint8_t *mask, T *out, float *scores, int64_t batch, \
              int64_t tokens, int64_t heads, int64_t kv_heads, int64_t dim, int64_t visible, int64_t length,      \
              float scale, int threads) {                                                                          \
        const int64_t group = heads / kv_heads;                                                                    \
        _Pragma("omp parallel for schedule(static) collapse(2) num_threads(threads)")                            \
        for (int64_t b = 0; b < batch; ++b)                                                                        \
            for (int64_t h = 0; h < heads; ++h) {                                                                  \
                const T *k = keys + ((b * kv_heads + h / group) * length) * dim;                                  \
                const T *v = values + ((b * kv_heads + h / group) * length) * dim;                                \
                for (int64_t t = 0; t < tokens; ++t) {                                                             \
                    const T *query = q + ((b * tokens + t) * heads + h) * dim;                                    \
                    const uint8_t *seen = mask ? mask + (b * tokens + t) * visible : NULL;                        \
                    float *row = scores + ((b * heads + h) * tokens + t) * visible;                               \
                    float best = -INFINITY;                                                                        \
                    for (int64_t s = 0; s < visible; ++s) {                                                        \
                        row[s] = seen && !seen[s] ? -INFINITY : DOT(query, k + s * dim, dim) * scale;             \
                        best = row[s] > best ? row[s] : best;                                                      \
                    }                                                                                              \
                    const float total = exponentials(row, visible, best);                                         \
                    const __m256 inverse = _mm256_set1_ps(1.0f / total);                                           \
                    T *target = out + ((b * tokens + t) * heads + h) * dim;                                       \
                    for (int64_t d = 0; d < dim; d += 32) {                                                        \
                        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),           \
                                         _mm256_setzero_ps()};                                                     \
                        const int width = dim - d < 32 ? (int)(dim - d) : 32, full = width / 8;                   \
                        float rest[8] = {0};                                                                       \
                        for (int64_t s2 = 0; s2 < visible; ++s2) {                                                 \
                            if (row[s2] == 0.0f) continue; /* masked (or underflowed): adds nothing */             \
                            const __m256 weight = _mm256_set1_ps(row[s2]);                                         \
                            for (int c = 0; c < full; ++c)                                                         \
                                acc[c] = _mm256_fmadd_ps(weight, LOAD_8(v + s2 * dim + d + 8 * c), acc[c]);       \
                            for (int c = full * 8; c < width; ++c)                                                 \
                                rest[c - full * 8] += row[s2] * WIDEN_1(v[s2 * dim + d + c]);                     \
                        }                                                                                          \
                        for (int c = 0; c < full; ++c) STORE_8(target + d + 8 * c, _mm256_mul_ps(acc[c], inverse)); \
                        for (int c = full * 8; c < width; ++c)                                                     \
                            target[d + c] = NARROW_1(rest[c - full * 8] * (1.0f / total));                        \
                    }                                                                                              \
                }                                                                                                  \
            }                                                                                                      \
    }

#endif
