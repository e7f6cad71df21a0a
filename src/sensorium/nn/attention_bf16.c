/* An encoder's bf16 self-attention on a CPU (sensorium/nn/gemv.py builds and loads this file; nn/attention.py
   calls it).

   softmax(q k^T * scale) v for every head of every sequence, with torch's CPU flash kernel's rounding points:
   float32 scores (bf16 products summed in float32), float32 softmax whose unnormalised exponentials are rounded to
   bf16 for the weighted sum of v, float32 sums, divided by the softmax's sum and rounded to bf16 once. What it
   does not do is torch's: the flash kernel's small GEMMs and conversions run at 100-150 GFLOP/s at 200-1200
   tokens on a 2-core Zen 4, a third of the bf16 GEMM rate; here q, k and v are packed once per head for
   AVX512-BF16 dot products (k transposed into pairs of channels, v into pairs of tokens) and the tiles keep their
   sums in registers. RoPE (the PE towers' adjacent pairs) is applied while packing, as apply_rope_pairs does it:
   float32 products, each rounded, then the sum, rounded to bf16.

   q, k and v are [B, T, H * D] views with their own batch and row strides (a fused qkv projection's output is
   read in place); out is [B, T, H * D], contiguous. D must be a multiple of 32. */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"

#define QROWS 8  /* query rows per score tile (8 rows x 32 keys: 16 sums in registers) */
#define VROWS 4  /* query rows per output tile (4 rows x 64 channels: 16 sums) */

/* 16 channels of one token with RoPE on adjacent pairs: (x0, x1) -> (x0 cos + x1 ssin0, x1 cos + x0 ssin1), ssin
   the signed sin of rope_tables (its even lanes -sin), each product rounded before the sum. */
static inline __m256i rotated_16(const uint16_t *x, const float *cos, const float *signed_sin) {
    const __m512 v = load_bf16(x, 0xffff);
    const __m512 swapped = _mm512_permute_ps(v, 0xB1);
    return to_bf16_16(_mm512_add_ps(_mm512_mul_ps(v, _mm512_loadu_ps(cos)),
                                    _mm512_mul_ps(swapped, _mm512_loadu_ps(signed_sin))));
}

/* One head of one sequence, packed: q [T][D] (rotated), k as pairs of channels [D/2][Tp] (32-bit: channel 2p and
   2p+1 of token t), v as pairs of tokens [Tp/2][D] (32-bit: token 2j and 2j+1 of channel d); Tp = T rounded up to
   32, the padding zero. */
static void pack_head(const uint16_t *q, const uint16_t *k, const uint16_t *v, int64_t q_row, int64_t k_row,
                      int64_t v_row, int64_t tokens, int64_t padded, int64_t dim, const float *cos,
                      const float *signed_sin, uint16_t *qp, uint32_t *kp, uint16_t *vp) {
    uint16_t row[512];  /* one rotated k row (dim <= 512) */
    for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t d = 0; d < dim; d += 16) {
            if (cos) {
                _mm256_storeu_si256((__m256i *)(qp + t * dim + d),
                                    rotated_16(q + t * q_row + d, cos + t * dim + d, signed_sin + t * dim + d));
                _mm256_storeu_si256((__m256i *)(row + d),
                                    rotated_16(k + t * k_row + d, cos + t * dim + d, signed_sin + t * dim + d));
            } else {
                memcpy(qp + t * dim + d, q + t * q_row + d, 32);
                memcpy(row + d, k + t * k_row + d, 32);
            }
        }
        const uint32_t *pairs = (const uint32_t *)row;
        for (int64_t p = 0; p < dim / 2; ++p) kp[p * padded + t] = pairs[p];
    }
    for (int64_t p = 0; p < dim / 2; ++p)
        for (int64_t t = tokens; t < padded; ++t) kp[p * padded + t] = 0;
    /* v: rows 2j and 2j+1 interleaved, 32 channels at a time */
    const __m512i low = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                         39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i high = _mm512_add_epi16(low, _mm512_set1_epi16(16));
    for (int64_t t = 0; t < padded; t += 2) {
        for (int64_t d = 0; d < dim; d += 32) {
            const __m512i even = t < tokens ? _mm512_loadu_si512(v + t * v_row + d) : _mm512_setzero_si512();
            const __m512i odd = t + 1 < tokens ? _mm512_loadu_si512(v + (t + 1) * v_row + d) : _mm512_setzero_si512();
            uint16_t *target = vp + (t / 2) * dim * 2 + d * 2;
            _mm512_storeu_si512(target, _mm512_permutex2var_epi16(even, low, odd));
            _mm512_storeu_si512(target + 32, _mm512_permutex2var_epi16(even, high, odd));
        }
    }
}

/* out[r][first + j] = sum over p < count of a[r][p] . b[p][first + j], for R rows and 16 * C columns: a's 32-bit
   elements (bf16 pairs) broadcast, b's rows loaded, float32 sums of bf16 products. Scores: a = q (channel pairs),
   b = k packed as channel pairs; outputs: a = the softmax's weights (token pairs), b = v packed as token pairs. */
static inline __attribute__((always_inline)) void tile(const int R, const int C, const uint32_t *a, int64_t a_row,
                                                        int64_t count, const uint32_t *b, int64_t b_row, int64_t first,
                                                        float *out, int64_t out_row) {
    __m512 acc[QROWS][4];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int64_t p = 0; p < count; ++p) {
        __m512bh columns[4];
        for (int c = 0; c < C; ++c) columns[c] = (__m512bh)_mm512_loadu_si512(b + p * b_row + first + 16 * c);
        for (int r = 0; r < R; ++r) {
            const __m512bh row = (__m512bh)_mm512_set1_epi32((int)a[r * a_row + p]);
            for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], row, columns[c]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + r * out_row + first + 16 * c, acc[r][c]);
}

/* Which of keys j .. j + 15 a query row sees: those below `visible`, and valid ones where there is a mask. */
static inline __mmask16 seen_lanes(int64_t visible, int64_t j, const uint8_t *valid) {
    const int64_t left = visible - j;
    __mmask16 lanes = left >= 16 ? 0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
    if (valid) lanes = _mm_mask_test_epi8_mask(lanes, _mm_maskz_loadu_epi8(lanes, valid + j), _mm_set1_epi8(-1));
    return lanes;
}

/* R (a constant in each copy, so the tiles' sums stay in registers) query rows from `row` of one head. */
#define ROW_BLOCK(R)                                                                                              \
    static void row_block_##R(const uint16_t *qp, const uint32_t *kp, const uint32_t *vp, int64_t row,           \
                              int64_t tokens, int64_t padded, int64_t dim, int causal, const uint8_t *valid,        \
                              float scale, float *scores, uint16_t *weights, float *sums, float *outs, uint16_t *out, int64_t out_row) {      \
        const int64_t pairs = dim / 2;                                                                            \
        const int64_t seen = causal ? (row + R < tokens ? row + R : tokens) : tokens; /* keys any row sees */     \
        const int64_t seen_padded = (seen + 15) / 16 * 16;                                                        \
        const uint32_t *q = (const uint32_t *)(qp + row * dim);                                                   \
        int64_t first = 0;                                                                                        \
        for (; first + 32 <= seen_padded; first += 32)                                                           \
            tile(R, 2, q, pairs, pairs, kp, padded, first, scores, padded);                                       \
        if (first < seen_padded) tile(R, 1, q, pairs, pairs, kp, padded, first, scores, padded);                 \
        const int64_t even = (seen + 1) / 2 * 2;                                                                   \
        for (int r = 0; r < R; ++r) {                                                                             \
            float *s = scores + r * padded;                                                                       \
            uint16_t *w = weights + r * padded;                                                                   \
            const int64_t visible = causal ? row + r + 1 : tokens;                                                \
            /* the largest score seen, scaled after: scaling by a positive number keeps the order and rounds     \
               monotonically, so this is the largest of the scaled scores (one read pass, nothing stored) */      \
            __m512 best = _mm512_set1_ps(-INFINITY);                                                              \
            for (int64_t j = 0; j < visible; j += 16)                                                             \
                best = _mm512_mask_max_ps(best, seen_lanes(visible, j, valid), best, _mm512_loadu_ps(s + j));     \
            const __m512 most = _mm512_set1_ps(_mm512_reduce_max_ps(best) * scale), by = _mm512_set1_ps(scale);   \
            __m512 total = _mm512_setzero_ps();                                                                   \
            for (int64_t j = 0; j < even; j += 16) {                                                              \
                const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(s + j), by);                                       \
                const __m512 e = _mm512_maskz_mov_ps(seen_lanes(visible, j, valid), exp_16(_mm512_sub_ps(x, most)));\
                total = _mm512_add_ps(total, e);                                                                  \
                const __mmask16 store = even - j >= 16 ? 0xffff : (__mmask16)((1u << (even - j)) - 1);            \
                /* the hardware's rounding (to nearest even, as to_bf16_16; it flushes subnormals, weights below \
                   1e-38 of the row's largest, which add nothing a bf16 output can show) */                     \
                _mm256_mask_storeu_epi16(w + j, store, (__m256i)_mm512_cvtneps_pbh(e));                           \
            }                                                                                                     \
            sums[r] = _mm512_reduce_add_ps(total);                                                                \
        }                                                                                                         \
        for (int64_t r0 = 0; r0 < R; r0 += VROWS) {                                                                \
            const int rows = R - r0 < VROWS ? (int)(R - r0) : VROWS;                                              \
            const uint32_t *w = (const uint32_t *)(weights + r0 * padded);                                        \
            for (int64_t c = 0; c < dim; c += 64) {                                                               \
                const int vectors = dim - c >= 64 ? 4 : (int)((dim - c) / 16);                                    \
                float *o = outs + r0 * dim;                                                                       \
                switch (rows * 8 + vectors) {                                                                     \
                    case 4 * 8 + 4: tile(4, 4, w, padded / 2, even / 2, vp, dim, c, o, dim); break;               \
                    case 4 * 8 + 2: tile(4, 2, w, padded / 2, even / 2, vp, dim, c, o, dim); break;               \
                    case 3 * 8 + 4: tile(3, 4, w, padded / 2, even / 2, vp, dim, c, o, dim); break;               \
                    case 3 * 8 + 2: tile(3, 2, w, padded / 2, even / 2, vp, dim, c, o, dim); break;               \
                    case 2 * 8 + 4: tile(2, 4, w, padded / 2, even / 2, vp, dim, c, o, dim); break;               \
                    case 2 * 8 + 2: tile(2, 2, w, padded / 2, even / 2, vp, dim, c, o, dim); break;               \
                    case 1 * 8 + 4: tile(1, 4, w, padded / 2, even / 2, vp, dim, c, o, dim); break;               \
                    case 1 * 8 + 2: tile(1, 2, w, padded / 2, even / 2, vp, dim, c, o, dim); break;               \
                }                                                                                                 \
            }                                                                                                     \
        }                                                                                                         \
        for (int r = 0; r < R; ++r) {                                                                             \
            const __m512 inverse = _mm512_set1_ps(sums[r] > 0.0f ? 1.0f / sums[r] : 0.0f); /* none seen: 0 */   \
            for (int64_t d = 0; d < dim; d += 16)                                                                 \
                _mm256_storeu_si256((__m256i *)(out + (row + r) * out_row + d),                                   \
                                    to_bf16_16(_mm512_mul_ps(_mm512_loadu_ps(outs + r * dim + d), inverse)));     \
        }                                                                                                         \
    }

ROW_BLOCK(1)
ROW_BLOCK(2)
ROW_BLOCK(3)
ROW_BLOCK(4)
ROW_BLOCK(5)
ROW_BLOCK(6)
ROW_BLOCK(7)
ROW_BLOCK(8)

typedef void (*row_block_fn)(const uint16_t *, const uint32_t *, const uint32_t *, int64_t, int64_t, int64_t, int64_t,
                             int, const uint8_t *, float, float *, uint16_t *, float *, float *, uint16_t *, int64_t);
static const row_block_fn ROW_BLOCKS[QROWS + 1] = {NULL, row_block_1, row_block_2, row_block_3, row_block_4,
                                                   row_block_5, row_block_6, row_block_7, row_block_8};

/* The R rows of one head from `block * QROWS`, from its packed q, k and v (`head`, as pack_head lays them out). */
static void attend_block(const uint16_t *head, int64_t block, int64_t tokens, int64_t padded, int64_t dim, int causal,
                         const uint8_t *valid, float scale, float *scores, uint16_t *weights, float *outs,
                         uint16_t *out, int64_t out_row) {
    const int64_t row = block * QROWS;
    const int rows = tokens - row < QROWS ? (int)(tokens - row) : QROWS;
    float sums[QROWS];
    ROW_BLOCKS[rows](head, (const uint32_t *)(head + tokens * dim), (const uint32_t *)(head + (tokens + padded) * dim),
                     row, tokens, padded, dim, causal, valid, scale, scores, weights, sums, outs, out, out_row);
}

/* Returns 0, or -1 for a head width it cannot take (not a multiple of 32, or over 512) or no memory. cos /
   signed_sin: [T, D] float32 or NULL. valid: [B, T] (1: a key every query may see, 0: padding) or NULL. A query that
   sees no key gets zeros, as SDPA.

   With two heads or more per thread (B * H >= 2 * threads: an encoder's batch), each thread packs a head into its own
   scratch and attends it at once, while the packed head is in its cache (1.09x over packing all heads first at
   PE-Core-B16's 96 heads, 1.14x at AST's); with fewer, all heads are packed first and their blocks of query rows
   shared out. */
int sensorium_attention_bf16(const uint16_t *q, const uint16_t *k, const uint16_t *v, int64_t q_batch, int64_t q_row,
                             int64_t k_batch, int64_t k_row, int64_t v_batch, int64_t v_row, uint16_t *out,
                             int64_t batch, int64_t tokens, int64_t heads, int64_t dim, const float *cos,
                             const float *signed_sin, int causal, const uint8_t *valid, float scale, int threads) {
    if (dim % 32 || dim > 512 || tokens < 1) return -1;
    const int64_t padded = (tokens + 31) / 32 * 32;
    const int64_t head_size = (tokens + 2 * padded) * dim;  /* bf16 elements; a multiple of 32 */
    const int64_t blocks = (tokens + QROWS - 1) / QROWS;
    const int64_t out_row = heads * dim;
    const int per_head = batch * heads >= 2 * (int64_t)threads;
    uint16_t *all = per_head ? NULL : aligned_alloc(64, batch * heads * head_size * sizeof(uint16_t));
    if (!per_head && !all) return -1;
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        float *scores = aligned_alloc(64, QROWS * padded * sizeof(float));
        uint16_t *weights = aligned_alloc(64, QROWS * padded * sizeof(uint16_t));
        float *outs = aligned_alloc(64, QROWS * dim * sizeof(float));
        uint16_t *own = per_head ? aligned_alloc(64, head_size * sizeof(uint16_t)) : NULL;
        if (!scores || !weights || !outs || (per_head && !own)) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp barrier
        if (!failed && per_head) {
            #pragma omp for schedule(dynamic, 1) collapse(2)
            for (int64_t b = 0; b < batch; ++b)
                for (int64_t h = 0; h < heads; ++h) {
                    pack_head(q + b * q_batch + h * dim, k + b * k_batch + h * dim, v + b * v_batch + h * dim, q_row,
                              k_row, v_row, tokens, padded, dim, cos, signed_sin, own,
                              (uint32_t *)(own + tokens * dim), own + (tokens + padded) * dim);
                    for (int64_t block = 0; block < blocks; ++block)
                        attend_block(own, block, tokens, padded, dim, causal, valid ? valid + b * tokens : NULL, scale,
                                     scores, weights, outs, out + b * tokens * out_row + h * dim, out_row);
                }
        } else if (!failed) {
            #pragma omp for schedule(static) collapse(2)
            for (int64_t b = 0; b < batch; ++b)
                for (int64_t h = 0; h < heads; ++h) {
                    uint16_t *head = all + (b * heads + h) * head_size;
                    pack_head(q + b * q_batch + h * dim, k + b * k_batch + h * dim, v + b * v_batch + h * dim, q_row,
                              k_row, v_row, tokens, padded, dim, cos, signed_sin, head,
                              (uint32_t *)(head + tokens * dim), head + (tokens + padded) * dim);
                }
            #pragma omp for schedule(dynamic, 4) collapse(3)
            for (int64_t b = 0; b < batch; ++b)
                for (int64_t h = 0; h < heads; ++h)
                    for (int64_t block = 0; block < blocks; ++block)
                        attend_block(all + (b * heads + h) * head_size, block, tokens, padded, dim, causal,
                                     valid ? valid + b * tokens : NULL, scale, scores, weights, outs,
                                     out + b * tokens * out_row + h * dim, out_row);
        }
        free(scores);
        free(weights);
        free(outs);
        free(own);
    }
    free(all);
    return failed ? -1 : 0;
}
