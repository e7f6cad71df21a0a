/* One-row bf16 products for a decoder's one-token steps (sensorium/nn/gemv.py builds and loads this file).

   y[m, n] = x[m, k] @ w[n, k]^T (+ bias[n]) for m <= 4: bf16 in and out, float32 sums (AVX512-BF16 dot products),
   read straight from the weight as stored. A step is bound by how fast the weight streams from memory, so the
   loop does little else: four rows of w at a time share each load of x, the m rows of x share each load of w, and
   one software prefetch sweeps the block's rows some KB ahead, into the blocks after it (short rows, k = 896,
   stream 1.5x faster with it). Rows are split across threads in contiguous ranges.

   A weight is read as stored ([n, k]) or in blocks of rows (gemv.py's to_blocks: [n / 4, k / 32, 4, 32], each
   block's 4 rows 32 values at a time in turn, so a block is one run of memory instead of 4 runs k apart; the same
   products in the same order, bit for bit). */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "kernels.h"

/* How far ahead of the block's sweep the prefetch reaches, and into which cache, measured on a 2-core Zen 4 with the
   weights on 2 MB pages (interleaved, in one process): rows of 2048 and more stream 1.13-1.26x faster prefetched
   32 KB ahead into L2 than 4 KB ahead into L1; rows of 1536 and fewer (Qwen2.5-0.5B's 896) 20-30 % slower so, and
   best 8 KB ahead into L1 (1.04-1.2x over 4 KB). */
#define LONG_ROW 2048
#define PREFETCH_LONG 32768
#define PREFETCH_SHORT 8192
#define PREFETCH_BLOCKED 2048

static inline __attribute__((always_inline)) void dot_block(const uint16_t *x, const int m, const uint16_t *w,
                                                            int64_t k, int64_t first, int rows, const int blocked,
                                                            float out[ROWS][4]) {
    __m512 acc[ROWS][4];
    for (int r = 0; r < ROWS; ++r)
        for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
    const char *block = (const char *)(w + first * k);
    const int long_rows = k >= LONG_ROW;
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {
        __m512bh xv[4];
        for (int j = 0; j < m; ++j) xv[j] = (__m512bh)_mm512_loadu_si512((const void *)(x + j * k + i));
        const char *ahead = block + 4 * 2 * i;  /* 4 lines an iteration: the block's rows at their pace */
        if (blocked)  /* one run of memory: 2 KB ahead into L2 (in a C probe as fast as none on 2048- and 8192-wide
                         rows, up to 1.05x on 896-wide ones) */
            for (int p = 0; p < 4; ++p) _mm_prefetch(ahead + PREFETCH_BLOCKED + 64 * p, _MM_HINT_T1);
        else if (long_rows)
            for (int p = 0; p < 4; ++p) _mm_prefetch(ahead + PREFETCH_LONG + 64 * p, _MM_HINT_T1);
        else
            for (int p = 0; p < 4; ++p) _mm_prefetch(ahead + PREFETCH_SHORT + 64 * p, _MM_HINT_T0);
        for (int r = 0; r < rows; ++r) {
            const uint16_t *line = blocked ? w + first * k + i * ROWS + r * 32 : w + (first + r) * k + i;
            __m512bh wv = (__m512bh)_mm512_loadu_si512((const void *)line);
            for (int j = 0; j < m; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], wv, xv[j]);
        }
    }
    if (i < k) {  /* the last k % 32 columns, masked (zeros add nothing); blocked weights have none */
        __mmask32 mask = (__mmask32)((1ull << (k - i)) - 1);
        __m512bh xv[4];
        for (int j = 0; j < m; ++j) xv[j] = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + j * k + i);
        for (int r = 0; r < rows; ++r) {
            __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + (first + r) * k + i);
            for (int j = 0; j < m; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], wv, xv[j]);
        }
    }
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < m; ++j) out[r][j] = _mm512_reduce_add_ps(acc[r][j]);
}



/* Weight-only int8 (nn/quant.py: one scale per output row): y[m, n] = bf16(scale[n] * sum_k x[m, k] * q[n, k]) for
   m <= 4, as torch's _weight_int8pack_mm computes it: x and q widened to float32 (both exact), float32 sums, one
   multiply by the scale, one rounding. xf is x already in float32 [m, k]. Blocks of 4 rows as above, 16 inputs at a
   time; the weight streams at a byte a value, so the same prefetch sweep runs at a quarter of bf16's pace. */
#define INT8_M(M)                                                                                                 \
    static void gemv_int8_m##M(const float *xf, const int8_t *w, const uint16_t *scales, uint16_t *y, int64_t n,  \
                               int64_t k, int threads) {                                                          \
        const int64_t blocks = (n + ROWS - 1) / ROWS;                                                             \
        const int long_rows = k >= 2 * LONG_ROW; /* bytes a row, as bf16's rule */                                \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                                        \
        for (int64_t b = 0; b < blocks; ++b) {                                                                    \
            const int64_t first = b * ROWS;                                                                       \
            const int rows = n - first < ROWS ? (int)(n - first) : ROWS;                                          \
            __m512 acc[ROWS][M];                                                                                  \
            for (int r = 0; r < ROWS; ++r)                                                                        \
                for (int j = 0; j < M; ++j) acc[r][j] = _mm512_setzero_ps();                                      \
            const char *block = (const char *)(w + first * k);                                                    \
            for (int64_t i = 0; i < k; i += 16) {                                                                 \
                const __mmask16 lanes = k - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (k - i)) - 1);      \
                __m512 xv[M];                                                                                     \
                for (int j = 0; j < M; ++j) xv[j] = _mm512_maskz_loadu_ps(lanes, xf + j * k + i);                 \
                if (long_rows) _mm_prefetch(block + ROWS * i + PREFETCH_LONG, _MM_HINT_T1);                       \
                else _mm_prefetch(block + ROWS * i + PREFETCH_SHORT, _MM_HINT_T0);                                \
                for (int r = 0; r < rows; ++r) {                                                                  \
                    const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(                                    \
                        _mm_maskz_loadu_epi8(lanes, w + (first + r) * k + i)));                                   \
                    for (int j = 0; j < M; ++j) acc[r][j] = _mm512_fmadd_ps(wv, xv[j], acc[r][j]);                \
                }                                                                                                 \
            }                                                                                                     \
            for (int r = 0; r < rows; ++r) {                                                                      \
                const float scale = from_bf16(scales[first + r]);                                                 \
                for (int j = 0; j < M; ++j) y[j * n + first + r] = to_bf16(_mm512_reduce_add_ps(acc[r][j]) * scale);\
            }                                                                                                     \
        }                                                                                                         \
    }

INT8_M(1)
INT8_M(2)
INT8_M(3)
INT8_M(4)

#include "one_row.h"  /* GEMV_MANY and the entry points, on this file's dot_block and int8 */

/* gated = bf16(bf16(silu(gated)) * up), elementwise: SwiGLU's roundings after its two products (each already bf16),
   16 at a time (silu = a / (1 + e^-a) with exp_16: 10x libm's expf one by one, ~1 % of a 1B decoder's step) */
void sensorium_silu_times(uint16_t *gated, const uint16_t *up, int64_t count) {
    for (int64_t i = 0; i < count; i += 16) {
        const __mmask16 lanes = count - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (count - i)) - 1);
        const __m512 a = load_bf16(gated + i, lanes);
        const __m512 silu = _mm512_div_ps(a, _mm512_add_ps(_mm512_set1_ps(1.0f), exp_16(_mm512_sub_ps(_mm512_setzero_ps(), a))));
        const __m512 rounded = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(to_bf16_16(silu)), 16));
        _mm256_mask_storeu_epi16(gated + i, lanes, to_bf16_16(_mm512_mul_ps(rounded, load_bf16(up + i, lanes))));
    }
}

/* out lane j = the sum of v[j]'s 16 lanes (a transposing tree: ~3 operations a vector, where reducing each alone
   takes ~8 and a chain of dependent shuffles) */
static inline __m512 sum_each_16(const __m512 v[16]) {
    __m512 pairs[8], quads[4];
    for (int i = 0; i < 8; ++i)  /* per 128-bit lane: [v2i, v2i+1, v2i, v2i+1] partial sums */
        pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; ++i) {  /* per 128-bit lane: v4i .. v4i+3, each summed over that lane */
        const __m512d a = _mm512_castps_pd(pairs[2 * i]), b = _mm512_castps_pd(pairs[2 * i + 1]);
        quads[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    const __m512 low = _mm512_add_ps(_mm512_shuffle_f32x4(quads[0], quads[1], 0x88),
                                     _mm512_shuffle_f32x4(quads[0], quads[1], 0xdd));
    const __m512 high = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2], quads[3], 0x88),
                                      _mm512_shuffle_f32x4(quads[2], quads[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(low, high, 0x88), _mm512_shuffle_f32x4(low, high, 0xdd));
}

/* A prompt's product on blocked weights: y[m, n] = bf16(x[m, k] @ w^T (+ bias)), float32 sums over all of k and
   one rounding, as oneDNN's bf16 linear (other summation order). w in blocks of rows (n % 4 == 0, k % 32 == 0).
   Threads take groups of 16 blocks (64 outputs, <= 64 * k * 2 bytes: in L2 while every tile of 6 rows of x passes
   over them); a tile keeps its 6 x 4 sums in registers, the 4 rows of w read once for the 6 rows of x. On 2 Zen 4
   cores 405-437 GFLOP/s at 281-1000 rows (oneDNN's bf16 GEMM: ~430), so a prompt needs no plain copy of the
   weights. A tile's last rows past m read a row of zeros. 0, or -1 without memory. */
#define TILE 6
#ifndef GROUP_BYTES
#define GROUP_BYTES (256 << 10)
#endif
int sensorium_gemm_blocked_bf16(const uint16_t *x, int64_t m, const uint16_t *w, const uint16_t *bias, uint16_t *y,
                                int64_t n, int64_t k, int threads) {
    uint16_t *zeros = calloc((size_t)k, sizeof(uint16_t));
    if (!zeros) return -1;
    /* blocks a group: ~GROUP_BYTES of w, kept in L2 while x passes over it once per group */
    const int64_t blocks = n / ROWS, per_group = GROUP_BYTES / (ROWS * k * 2) > 4 ? GROUP_BYTES / (ROWS * k * 2) : 4;
    const int64_t groups = (blocks + per_group - 1) / per_group;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t g = 0; g < groups; ++g) {
        const int64_t last = (g + 1) * per_group < blocks ? (g + 1) * per_group : blocks;
        for (int64_t m0 = 0; m0 < m; m0 += TILE) {
            const int rows = m - m0 < TILE ? (int)(m - m0) : TILE;
            const uint16_t *xs[TILE];
            for (int j = 0; j < TILE; ++j) xs[j] = j < rows ? x + (m0 + j) * k : zeros;
            for (int64_t b = g * per_group; b < last; ++b) {
                __m512 acc[TILE][ROWS];
                for (int j = 0; j < TILE; ++j)
                    for (int r = 0; r < ROWS; ++r) acc[j][r] = _mm512_setzero_ps();
                const uint16_t *block = w + b * ROWS * k;
                for (int64_t i = 0; i < k; i += 32) {
                    __m512bh wv[ROWS];
                    for (int r = 0; r < ROWS; ++r) wv[r] = (__m512bh)_mm512_loadu_si512((const void *)(block + i * ROWS + r * 32));
                    for (int j = 0; j < TILE; ++j) {
                        const __m512bh xv = (__m512bh)_mm512_loadu_si512((const void *)(xs[j] + i));
                        for (int r = 0; r < ROWS; ++r) acc[j][r] = _mm512_dpbf16_ps(acc[j][r], wv[r], xv);
                    }
                }
                __m512 v[16];
                float sums[32];
                for (int j = 0; j < 4; ++j)
                    for (int r = 0; r < ROWS; ++r) v[j * ROWS + r] = acc[j][r];
                _mm512_storeu_ps(sums, sum_each_16(v));
                for (int j = 0; j < 16; ++j) v[j] = j < 8 ? acc[4 + j / ROWS][j % ROWS] : _mm512_setzero_ps();
                _mm512_storeu_ps(sums + 16, sum_each_16(v));
                for (int j = 0; j < rows; ++j)
                    for (int r = 0; r < ROWS; ++r) {
                        const int64_t col = b * ROWS + r;
                        y[(m0 + j) * n + col] = to_bf16(bias ? sums[j * ROWS + r] + from_bf16(bias[col])
                                                             : sums[j * ROWS + r]);
                    }
            }
        }
    }
    free(zeros);
    return 0;
}

/* softmax(q k^T * scale, masked) v for T <= a few queries per row over S cached keys, as few_query_attention:
   float32 scores (bf16 products, float32 sums), softmax and weighted sum, the output rounded to bf16 once. q [B, T,
   H, D]; keys and values [B, Hkv, L, D] of which the first S slots are read (L: the cache's length); mask [B, T, S]
   (1 = visible) or NULL; out [B, T, H, D]; scores: a float32 scratch of B * H * T * S. Query head h reads
   key/value head h / (H / Hkv). Scores 16 keys at a time (each key's dot products summed across lanes together),
   the exponentials 16 at a time, the weighted sum 64 channels at a time in one pass over the values. */
void sensorium_step_attention_bf16(const uint16_t *q, const uint16_t *keys, const uint16_t *values,
                                   const uint8_t *mask, uint16_t *out, float *scores, int64_t batch, int64_t tokens,
                                   int64_t heads, int64_t kv_heads, int64_t dim, int64_t visible, int64_t length,
                                   float scale, int threads) {
    const int64_t group = heads / kv_heads, chunks = (dim + 31) / 32;
    const __mmask32 last_chunk = dim % 32 ? (__mmask32)((1u << (dim % 32)) - 1) : (__mmask32)0xffffffffu;
    #pragma omp parallel for schedule(static) collapse(2) num_threads(threads)
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t h = 0; h < heads; ++h) {
            const uint16_t *k = keys + ((b * kv_heads + h / group) * length) * dim;
            const uint16_t *v = values + ((b * kv_heads + h / group) * length) * dim;
            for (int64_t t = 0; t < tokens; ++t) {
                const uint16_t *query = q + ((b * tokens + t) * heads + h) * dim;
                const uint8_t *seen = mask ? mask + (b * tokens + t) * visible : NULL;
                float *row = scores + ((b * heads + h) * tokens + t) * visible;
                __m512 best = _mm512_set1_ps(-INFINITY);
                for (int64_t s = 0; s < visible; s += 16) {
                    const int n = visible - s < 16 ? (int)(visible - s) : 16;
                    __m512 dots[16];
                    for (int j = 0; j < 16; ++j) {
                        __m512 acc = _mm512_setzero_ps();
                        for (int64_t c = 0; j < n && c < chunks; ++c) {
                            const __mmask32 lanes = c + 1 < chunks ? (__mmask32)0xffffffffu : last_chunk;
                            acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi16(lanes, query + 32 * c),
                                                   (__m512bh)_mm512_maskz_loadu_epi16(lanes, k + (s + j) * dim + 32 * c));
                        }
                        dots[j] = acc;
                    }
                    __mmask16 kept = n == 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
                    if (seen) kept = _mm_mask_test_epi8_mask(kept, _mm_maskz_loadu_epi8(kept, seen + s), _mm_set1_epi8(-1));
                    const __m512 x = _mm512_mask_mul_ps(_mm512_set1_ps(-INFINITY), kept, sum_each_16(dots),
                                                        _mm512_set1_ps(scale));
                    _mm512_mask_storeu_ps(row + s, (__mmask16)((1u << n) - 1), x);
                    best = _mm512_max_ps(best, x);
                }
                const __m512 most = _mm512_set1_ps(_mm512_reduce_max_ps(best));
                __m512 sums = _mm512_setzero_ps();
                for (int64_t s = 0; s < visible; s += 16) {
                    const int n = visible - s < 16 ? (int)(visible - s) : 16;
                    const __mmask16 lanes = (__mmask16)((1u << n) - 1);
                    const __m512 x = _mm512_maskz_loadu_ps(lanes, row + s);
                    const __mmask16 kept = lanes & _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
                    const __m512 e = _mm512_maskz_mov_ps(kept, exp_16(_mm512_sub_ps(x, most)));
                    _mm512_mask_storeu_ps(row + s, lanes, e);
                    sums = _mm512_add_ps(sums, e);
                }
                const __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sums));
                uint16_t *target = out + ((b * tokens + t) * heads + h) * dim;
                for (int64_t d = 0; d < dim; d += 64) {  /* up to 4 x 16 channels summed in one pass over s */
                    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
                    __mmask16 lanes[4];
                    for (int c = 0; c < 4; ++c) {
                        const int64_t left = dim - d - 16 * c;
                        lanes[c] = left >= 16 ? (__mmask16)0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
                    }
                    for (int64_t s = 0; s < visible; ++s) {
                        if (row[s] == 0.0f) continue;  /* masked (or underflowed): adds nothing */
                        const __m512 weight = _mm512_set1_ps(row[s]);
                        for (int c = 0; c < 4; ++c)
                            if (lanes[c]) acc[c] = _mm512_fmadd_ps(weight, load_bf16(v + s * dim + d + 16 * c, lanes[c]), acc[c]);
                    }
                    for (int c = 0; c < 4 && lanes[c]; ++c) {
                        float lane[16];
                        _mm512_storeu_ps(lane, _mm512_mul_ps(acc[c], inverse));
                        for (int i = 0; i < 16; ++i)
                            if (lanes[c] >> i & 1) target[d + 16 * c + i] = to_bf16(lane[i]);
                    }
                }
            }
        }
}
