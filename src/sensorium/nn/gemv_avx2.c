/* The AVX2 + FMA flavour of sensorium's one-row products and a decode step's attention (sensorium/nn/gemv.py builds
   it where the CPU has no AVX512-BF16: AMD Zen 2 / Zen 3, Intel cores before Sapphire Rapids, most laptops). The
   same entry points, layouts and roundings as gemv_bf16.c, 8 float32 lanes instead of 16 and no bf16 dot product:
   each 16 bf16 values become two float32 vectors (the even ones shifted into place, the odd ones masked: a shift
   and an AND, exact), multiplied and summed by FMA. Sums run in another order than gemv_bf16.c's, so the two
   flavours agree to float32 rounding, each bit-equal with itself across layouts, thread counts and one call or
   many. A step is bound by how fast the weight streams, which 8 lanes reach: what torch does instead on such a CPU
   is its bf16 product row by row (oneDNN has no bf16 there). */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "kernels.h"
#include "lanes8.h"

#define PREFETCH_BLOCKED 2048  /* bytes ahead of a blocked sweep (one run of memory), into L2 */
#define PREFETCH_ROWS 8192     /* plain rows: ahead of the block's 4 rows at their pace, into L2 */

static inline __m256 even_f32(__m256i raw) {  /* bf16 values 0, 2, .., 14 of 16 -> float32 */
    return _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
}

static inline __m256 odd_f32(__m256i raw) {  /* bf16 values 1, 3, .., 15 of 16 -> float32 */
    return _mm256_castsi256_ps(_mm256_and_si256(raw, _mm256_set1_epi32((int)0xffff0000u)));
}

/* Rows first .. first + rows - 1 of w (plain [n, k], or blocked [n / 4, k / 32, 4, 32]) against M rows of x: out[r][j]
   in float32. 16 values a step: x's converted once for the block's rows; the last k % 16 (plain only) one by one. */
static inline __attribute__((always_inline)) void dot_block(const uint16_t *x, const int m, const uint16_t *w,
                                                            int64_t k, int64_t first, int rows, const int blocked,
                                                            float out[ROWS][4]) {
    __m256 acc[ROWS][4];
    float tail[ROWS][4];
    for (int r = 0; r < ROWS; ++r)
        for (int j = 0; j < 4; ++j) acc[r][j] = _mm256_setzero_ps(), tail[r][j] = 0.0f;
    const char *block = (const char *)(w + first * k);
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        __m256 xe[4], xo[4];
        for (int j = 0; j < m; ++j) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(x + j * k + i));
            xe[j] = even_f32(raw), xo[j] = odd_f32(raw);
        }
        if (i % 32 == 0)  /* 4 lines a 32 values: the block's rows at their pace */
            for (int p = 0; p < 4; ++p)
                _mm_prefetch(block + 4 * 2 * i + (blocked ? PREFETCH_BLOCKED : PREFETCH_ROWS) + 64 * p, _MM_HINT_T1);
        for (int r = 0; r < rows; ++r) {
            const uint16_t *line = blocked ? w + first * k + (i & ~(int64_t)31) * ROWS + r * 32 + (i & 31)
                                           : w + (first + r) * k + i;
            const __m256i raw = _mm256_loadu_si256((const __m256i *)line);
            const __m256 we = even_f32(raw), wo = odd_f32(raw);
            for (int j = 0; j < m; ++j) acc[r][j] = _mm256_fmadd_ps(wo, xo[j], _mm256_fmadd_ps(we, xe[j], acc[r][j]));
        }
    }
    for (; i < k; ++i)  /* plain rows only: blocked ones are a multiple of 32 */
        for (int r = 0; r < rows; ++r)
            for (int j = 0; j < m; ++j) tail[r][j] += from_bf16(w[(first + r) * k + i]) * from_bf16(x[j * k + i]);
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < m; ++j) out[r][j] = sum_8(acc[r][j]) + tail[r][j];
}

/* Weight-only int8, as gemv_bf16.c's: x widened to float32 once (the caller's scratch), q widened 8 at a time,
   float32 sums, one multiply by the row's scale, one rounding. */
#define INT8_WIDEN_8(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#define INT8_WIDEN_1(v) ((float)(v))
#define INT8_PREFETCH(at) _mm_prefetch((at) + PREFETCH_ROWS, _MM_HINT_T1)
#define INT8_STORE(r, j, total) y[(j) * n + first + (r)] = to_bf16((total) * from_bf16(scales[first + (r)]))
#define INT8_M(M) FLOAT32_SUMS(gemv_int8, M, int8_t, INT8_WIDEN_8, INT8_WIDEN_1, INT8_PREFETCH, INT8_STORE,        \
                               const uint16_t *scales, uint16_t *y)
INT8_M(1)
INT8_M(2)
INT8_M(3)
INT8_M(4)

#include "one_row.h"  /* GEMV_MANY and the entry points, on this file's dot_block and int8 */

static inline __m256 load_bf16_8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

static inline void store_bf16_8(uint16_t *p, __m256 v) {  /* round to nearest even, as to_bf16 (NaN kept) */
    float lane[8];
    _mm256_storeu_ps(lane, v);
    for (int i = 0; i < 8; ++i) p[i] = to_bf16(lane[i]);
}

void sensorium_silu_times(uint16_t *gated, const uint16_t *up, int64_t count) {
    for (int64_t i = 0; i < count; i += 8) {  /* the last count % 8 through a padded copy: the same arithmetic */
        const int n = count - i < 8 ? (int)(count - i) : 8;
        uint16_t a[8] = {0}, b[8] = {0}, rounded[8];
        memcpy(a, gated + i, sizeof(uint16_t) * n);
        memcpy(b, up + i, sizeof(uint16_t) * n);
        store_bf16_8(rounded, silu_8(load_bf16_8(a)));
        store_bf16_8(a, _mm256_mul_ps(load_bf16_8(rounded), load_bf16_8(b)));
        memcpy(gated + i, a, sizeof(uint16_t) * n);
    }
}

/* One query's score against a key of `dim` bf16 channels: each 16 values as two float32 vectors, FMA, the lanes
   summed, the last dim % 16 one by one (STEP_ATTENTION's DOT; gemv_f32.c has the float32 one). */
static inline float dot_bf16(const uint16_t *query, const uint16_t *key, int64_t dim) {
    __m256 acc = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 16 <= dim; c += 16) {
        const __m256i qa = _mm256_loadu_si256((const __m256i *)(query + c));
        const __m256i ka = _mm256_loadu_si256((const __m256i *)(key + c));
        acc = _mm256_fmadd_ps(odd_f32(qa), odd_f32(ka), _mm256_fmadd_ps(even_f32(qa), even_f32(ka), acc));
    }
    float dot = sum_8(acc);
    for (; c < dim; ++c) dot += from_bf16(query[c]) * from_bf16(key[c]);
    return dot;
}

STEP_ATTENTION(sensorium_step_attention_bf16, uint16_t, dot_bf16, load_bf16_8, store_bf16_8, from_bf16, to_bf16)
