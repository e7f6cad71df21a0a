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

#define PREFETCH_BLOCKED 2048  /* bytes ahead of a blocked sweep (one run of memory), into L2 */
#define PREFETCH_ROWS 8192     /* plain rows: ahead of the block's 4 rows at their pace, into L2 */

static inline __m256 even_f32(__m256i raw) {  /* bf16 values 0, 2, .., 14 of 16 -> float32 */
    return _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
}

static inline __m256 odd_f32(__m256i raw) {  /* bf16 values 1, 3, .., 15 of 16 -> float32 */
    return _mm256_castsi256_ps(_mm256_and_si256(raw, _mm256_set1_epi32((int)0xffff0000u)));
}

static inline float sum_8(__m256 v) {
    const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
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

/* float32 weights (a float32 decoder's step, sn.load's default on a CPU): y[m, n] = x[m, k] @ w[n, k]^T (+ bias[n]),
   float32 FMA sums, the bias added once at the end (as oneDNN's float32 linear, in another order). On 2 Zen 3 cores
   this plain sweep of 4 rows streams the weight at the rate of a read (29-30 GB/s, oneDNN's float32 product 23-25,
   MKL's 18-20) and a software prefetch changes nothing (0.98-1.06x; the hardware prefetcher follows 4 sequential
   rows): benchmarks/gemv_f32_probe.py. */
#define F32_WIDEN_8(p) _mm256_loadu_ps(p)
#define F32_WIDEN_1(v) (v)
#define F32_NO_PREFETCH(at) ((void)(at))
#define F32_STORE(r, j, total) y[(j) * n + first + (r)] = (total) + (bias ? bias[first + (r)] : 0.0f)
#define F32_M(M) FLOAT32_SUMS(gemv_f32, M, float, F32_WIDEN_8, F32_WIDEN_1, F32_NO_PREFETCH, F32_STORE,            \
                              const float *bias, float *y)
F32_M(1)
F32_M(2)
F32_M(3)
F32_M(4)

#include "one_row.h"  /* GEMV_MANY and the entry points, on this file's dot_block and int8 */

/* the avx2 build only: measured faster than oneDNN's float32 product there (BENCHMARKS.md, ninth pass); on AVX-512
   CPUs float32 steps stay on oneDNN until measured there */
int sensorium_gemv_f32(const float *x, int64_t m, const float *w, const float *bias, float *y, int64_t n, int64_t k,
                       int threads) {
    BY_ROWS(gemv_f32, x, w, bias, y, n, k, threads)
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

static inline __m256 load_bf16_8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

static inline void store_bf16_8(uint16_t *p, __m256 v) {  /* round to nearest even, as to_bf16 (NaN kept) */
    float lane[8];
    _mm256_storeu_ps(lane, v);
    for (int i = 0; i < 8; ++i) p[i] = to_bf16(lane[i]);
}

static inline __m256 silu_8(__m256 a) {  /* a / (1 + e^-a) */
    return _mm256_div_ps(a, _mm256_add_ps(_mm256_set1_ps(1.0f), exp_8(_mm256_sub_ps(_mm256_setzero_ps(), a))));
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

/* A row of scores -> e^(score - best) in place (masked -inf ones 0), 8 at a time; their sum (a step's softmax before
   the division, in both attentions below) */
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

/* One query's scores against `visible` keys of `dim` channels, 8 float32 lanes of FMA then the lanes summed, the
   last dim % (16 or 8) one by one: bf16 keys (each 16 values as two float32 vectors) or float32 ones. */
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

static inline float dot_f32(const float *query, const float *key, int64_t dim) {
    __m256 acc = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 8 <= dim; c += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(query + c), _mm256_loadu_ps(key + c), acc);
    float dot = sum_8(acc);
    for (; c < dim; ++c) dot += query[c] * key[c];
    return dot;
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

STEP_ATTENTION(sensorium_step_attention_bf16, uint16_t, dot_bf16, load_bf16_8, store_bf16_8, from_bf16, to_bf16)

/* float32 decoders' steps (decoder_step_f32.c), the avx2 build only, as the float32 one-row product */

/* gated = silu(gated) * up in float32 (F.silu(gate(x)) * up(x) of a float32 SwiGLU; exp_8 for torch's exp, which
   differ in the last bits) */
void sensorium_silu_times_f32(float *gated, const float *up, int64_t count) {
    int64_t i = 0;
    for (; i + 8 <= count; i += 8)
        _mm256_storeu_ps(gated + i, _mm256_mul_ps(silu_8(_mm256_loadu_ps(gated + i)), _mm256_loadu_ps(up + i)));
    if (i < count) {  /* the last count % 8 through a padded copy: the same arithmetic */
        float a[8] = {0}, b[8] = {0};
        memcpy(a, gated + i, sizeof(float) * (count - i));
        memcpy(b, up + i, sizeof(float) * (count - i));
        _mm256_storeu_ps(a, _mm256_mul_ps(silu_8(_mm256_loadu_ps(a)), _mm256_loadu_ps(b)));
        memcpy(gated + i, a, sizeof(float) * (count - i));
    }
}

/* few_query_attention in float32 */
STEP_ATTENTION(sensorium_step_attention_f32, float, dot_f32, _mm256_loadu_ps, _mm256_storeu_ps, IDENTITY, IDENTITY)
