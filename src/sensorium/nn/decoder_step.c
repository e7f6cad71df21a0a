/* A decoder step's portable parts, built into each flavour of sensorium's kernels (nn/gemv.py): the SwiGLU and
   whole-step drivers over the flavour's one-row products (gemv_bf16.c: AVX512-BF16; gemv_avx2.c: AVX2 + FMA), and the
   small elementwise ops of a step (RMSNorm, RoPE, residual adds), in plain C with torch's roundings. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "kernels.h"

/* A plain weight [n, k] (n a multiple of 4, k of 32) into its blocks (gemv.py's to_blocks: the loader, once a
   weight). */
void sensorium_block_bf16(const uint16_t *plain, uint16_t *blocked, int64_t n, int64_t k, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < n / ROWS; ++b)
        for (int64_t i = 0; i < k; i += 32)
            for (int r = 0; r < ROWS; ++r)
                memcpy(blocked + b * ROWS * k + i * ROWS + r * 32, plain + (b * ROWS + r) * k + i, 64);
}

/* SwiGLU's first half: y = silu(x @ gate^T) * (x @ up^T), rounded to bf16 where torch's bf16 ops round (after
   each product, after silu, after the multiply), so it equals F.silu(gate(x)) * up(x) but for the sums' order. The
   two products stream one matrix after the other (1.15x over alternating between them block by block, measured on
   Qwen2.5-0.5B's 4864x896 on a 2-core Zen 4). 0, -1 for m > 4 or no memory. */
int sensorium_swiglu_bf16(const uint16_t *x, int64_t m, const uint16_t *gate, const uint16_t *up, uint16_t *y,
                          int64_t n, int64_t k, int blocked, int threads) {
    uint16_t *ups = malloc(sizeof(uint16_t) * m * n);
    const uint16_t *weights[2] = {gate, up}, *biases[2] = {NULL, NULL};
    uint16_t *outs[2] = {y, ups};
    const int64_t ns[2] = {n, n};
    const int layouts[2] = {blocked, blocked};
    int status = ups ? sensorium_gemv_many_bf16(x, m, 2, weights, biases, outs, ns, k, layouts, threads) : -1;
    if (status == 0) sensorium_silu_times(y, ups, m * n);
    free(ups);
    return status;
}


/* transformers' Llama/Qwen2 RMSNorm of a few bf16 rows: weight * bf16(x * rsqrt(mean(x^2) + eps)), in float32
   (torch's mean sums in another order: the bf16 result differs by a rounding at most, rarely) */
void sensorium_rms_norm_bf16(const uint16_t *x, int64_t m, const uint16_t *weight, uint16_t *y, int64_t k,
                             float eps) {
    for (int64_t i = 0; i < m; ++i) {
        const uint16_t *row = x + i * k;
        float squares = 0.0f;
        for (int64_t j = 0; j < k; ++j) {
            const float v = from_bf16(row[j]);
            squares += v * v;
        }
        const float scale = 1.0f / sqrtf(squares / (float)k + eps);
        for (int64_t j = 0; j < k; ++j)
            y[i * k + j] = to_bf16(from_bf16(weight[j]) * from_bf16(to_bf16(from_bf16(row[j]) * scale)));
    }
}

/* The rest of a decode step's attention, for its few tokens (nn/decoder.py with the kernel; the same rounding
   points as the torch ops they replace: float32 math, bf16 where torch rounds). */

/* Rotate-half RoPE on q [B, T, H, D] and k [B, T, Hkv, D] in place: x * cos + rotate_half(x) * sin, with cos and
   sin float32 [B, T, D]; as apply_rope_halves: each product rounded to float32, then the sum (no FMA contraction in
   these builds), then to T (NARROW: bf16; a float32 decoder's, decoder_step_f32.c: as it is). */
#define ROPE_HALVES(NAME, T, WIDEN, NARROW)                                                                        \
    void NAME(T *q, T *k, const float *cos, const float *sin, int64_t batch, int64_t tokens, int64_t heads,       \
              int64_t kv_heads, int64_t dim) {                                                                     \
        const int64_t half = dim / 2;                                                                              \
        for (int64_t bt = 0; bt < batch * tokens; ++bt) {                                                          \
            const float *c = cos + bt * dim, *s = sin + bt * dim;                                                  \
            for (int which = 0; which < 2; ++which) {                                                              \
                const int64_t count = which ? kv_heads : heads;                                                    \
                T *x = (which ? k : q) + bt * count * dim;                                                         \
                for (int64_t h = 0; h < count; ++h, x += dim)                                                      \
                    for (int64_t d = 0; d < half; ++d) {                                                           \
                        const float first = WIDEN(x[d]), second = WIDEN(x[d + half]);                              \
                        const float a = first * c[d], b = -second * s[d];                                          \
                        const float e = second * c[d + half], f = first * s[d + half];                             \
                        x[d] = NARROW(a + b);                                                                      \
                        x[d + half] = NARROW(e + f);                                                               \
                    }                                                                                              \
            }                                                                                                      \
        }                                                                                                          \
    }

#define AS_IS(v) (v)
ROPE_HALVES(sensorium_rope_halves_bf16, uint16_t, from_bf16, to_bf16)
ROPE_HALVES(sensorium_rope_halves_f32, float, AS_IS, AS_IS)


/* A decoder's whole one-token step through its layers in one call (Llama / Qwen2: RMSNorm, q/k/v with optional
   biases, rotate-half RoPE, attention over the cache, o, residual add, RMSNorm, SwiGLU, down, residual add): the
   calls above in sequence, with the residual adds rounded as torch's bf16 add rounds, so the hidden state is
   bit-equal to making those calls one by one from Python, without ~20 Python-side operations a layer (~4 ms of a
   56 ms Llama-1B step on a 2-core Zen 4). Int8 and int4 layers (nn/quant.py) round where
   QuantizedLinear and the SwiGLU module round; their attention is the kernels', where layer by layer it is torch's float32
   matmuls. x [m = batch * tokens, width] is updated in place; each token's k and v
   go to cache slot start + t; attention reads slots 0 .. start + tokens - 1 under mask [batch, tokens, visible]
   (1 = seen) or all of them; cos and sin float32 [batch, tokens, dim]; the layers' tensors in kernels.h's
   sensorium_layer. 0, or -1 when scratch memory could not be had. */

static void add_into(uint16_t *x, const uint16_t *y, int64_t count) {
    for (int64_t i = 0; i < count; ++i) x[i] = to_bf16(from_bf16(x[i]) + from_bf16(y[i]));
}

/* rows of y [m, n] += bias [n], each sum rounded (QuantizedLinear adds its bias after the product's rounding) */
static void add_bias(uint16_t *y, const uint16_t *bias, int64_t m, int64_t n) {
    if (bias)
        for (int64_t i = 0; i < m; ++i) add_into(y + i * n, bias, n);
}

/* One of a layer's linears, rounded as its module rounds: bf16 (scales NULL; the bias added before the rounding, as
   torch's linear), or int8 / int4 (group 0 / not: the kernel's product rounded, then the bias, as QuantizedLinear). */
static int step_linear(const uint16_t *x, int64_t m, const uint16_t *w, const uint16_t *scales, const uint16_t *bias,
                       uint16_t *y, int64_t n, int64_t k, int blocked, int64_t group, float *xf, int threads) {
    if (!scales) return sensorium_gemv_bf16(x, m, w, bias, y, n, k, blocked, threads);
    const int status = group ? sensorium_gemv_int4(x, m, (const uint8_t *)w, scales, y, n, k, group, xf, threads)
                             : sensorium_gemv_int8(x, m, (const int8_t *)w, scales, y, n, k, xf, threads);
    if (status != 0) return -1;
    add_bias(y, bias, m, n);
    return 0;
}

/* Several of them reading the same x (q/k/v; gate/up), all bf16 or all quantized: bf16 ones in one parallel
   region. */
static int step_linears(const uint16_t *x, int64_t m, int count, const uint16_t *const *weights,
                        const uint16_t *const *scales, const uint16_t *const *biases, uint16_t *const *outs,
                        const int64_t *ns, int64_t k, const int *blocked, const int64_t *groups, float *xf,
                        int threads) {
    if (!scales[0]) return sensorium_gemv_many_bf16(x, m, count, weights, biases, outs, ns, k, blocked, threads);
    for (int j = 0; j < count; ++j)
        if (step_linear(x, m, weights[j], scales[j], biases[j], outs[j], ns[j], k, 0, groups[j], xf, threads) != 0)
            return -1;
    return 0;
}

int sensorium_decoder_step_bf16(uint16_t *x, int64_t batch, int64_t tokens, const sensorium_layer *layers,
                                int64_t count, int64_t width, int64_t heads, int64_t kv_heads, int64_t dim,
                                int64_t hidden, int64_t length, float eps, float scale, const float *cos,
                                const float *sin, const uint8_t *mask, int64_t start, int threads) {
    const int64_t m = batch * tokens, visible = start + tokens, q_width = heads * dim, kv_width = kv_heads * dim;
    uint16_t *normed = malloc(sizeof(uint16_t) * m * width), *residual = malloc(sizeof(uint16_t) * m * width);
    uint16_t *q = malloc(sizeof(uint16_t) * m * q_width), *attended = malloc(sizeof(uint16_t) * m * q_width);
    uint16_t *k = malloc(sizeof(uint16_t) * m * kv_width), *v = malloc(sizeof(uint16_t) * m * kv_width);
    uint16_t *gated = malloc(sizeof(uint16_t) * m * hidden), *up = malloc(sizeof(uint16_t) * m * hidden);
    float *scores = malloc(sizeof(float) * batch * heads * tokens * visible);
    const int64_t widest = hidden > q_width ? (hidden > width ? hidden : width) : (q_width > width ? q_width : width);
    float *xf = malloc(sizeof(float) * m * (widest + widest / 32)); /* a quantized product's input, widened (int4:
                                                                          and its sums per group) */
    int status = -1;
    if (!normed || !residual || !q || !attended || !k || !v || !gated || !up || !scores || !xf) goto done;
    for (int64_t i = 0; i < count; ++i) {
        const sensorium_layer *layer = layers + i;
        sensorium_rms_norm_bf16(x, m, layer->attn_norm, normed, width, eps);
        const uint16_t *projections[3] = {layer->q, layer->k, layer->v};
        const uint16_t *qkv_scales[3] = {layer->q_scales, layer->k_scales, layer->v_scales};
        const uint16_t *biases[3] = {layer->q_bias, layer->k_bias, layer->v_bias};
        uint16_t *outs[3] = {q, k, v};
        const int64_t ns[3] = {q_width, kv_width, kv_width};
        const int qkv_blocked[3] = {layer->blocked & 1, layer->blocked >> 1 & 1, layer->blocked >> 2 & 1};
        if (step_linears(normed, m, 3, projections, qkv_scales, biases, outs, ns, width, qkv_blocked, layer->int4_groups,
                         xf, threads) != 0)
            goto done;
        sensorium_rope_halves_bf16(q, k, cos, sin, batch, tokens, heads, kv_heads, dim);
        for (int64_t b = 0; b < batch; ++b)
            for (int64_t t = 0; t < tokens; ++t)
                for (int64_t h = 0; h < kv_heads; ++h) {
                    const int64_t from = ((b * tokens + t) * kv_heads + h) * dim;
                    const int64_t to = ((b * kv_heads + h) * length + start + t) * dim;
                    memcpy(layer->keys + to, k + from, sizeof(uint16_t) * dim);
                    memcpy(layer->values + to, v + from, sizeof(uint16_t) * dim);
                }
        sensorium_step_attention_bf16(q, layer->keys, layer->values, mask, attended, scores, batch, tokens, heads,
                                      kv_heads, dim, visible, length, scale, threads);
        if (step_linear(attended, m, layer->o, layer->o_scales, NULL, residual, width, q_width, layer->blocked >> 3 & 1,
                        layer->int4_groups[3], xf, threads) != 0)
            goto done;
        add_into(x, residual, m * width);
        sensorium_rms_norm_bf16(x, m, layer->mlp_norm, normed, width, eps);
        const uint16_t *mlp[2] = {layer->gate, layer->up}, *mlp_scales[2] = {layer->gate_scales, layer->up_scales};
        const uint16_t *no_biases[2] = {NULL, NULL};
        uint16_t *mlp_outs[2] = {gated, up};
        const int64_t mlp_ns[2] = {hidden, hidden};
        const int mlp_blocked[2] = {layer->blocked >> 4 & 1, layer->blocked >> 5 & 1};
        if (step_linears(normed, m, 2, mlp, mlp_scales, no_biases, mlp_outs, mlp_ns, width, mlp_blocked,
                         layer->int4_groups + 4, xf, threads) != 0)
            goto done;
        sensorium_silu_times(gated, up, m * hidden);  /* as sensorium_swiglu_bf16 and the SwiGLU module round */
        if (step_linear(gated, m, layer->down, layer->down_scales, NULL, residual, width, hidden,
                        layer->blocked >> 6 & 1, layer->int4_groups[6], xf, threads) != 0)
            goto done;
        add_into(x, residual, m * width);
    }
    status = 0;
done:
    free(normed), free(residual), free(q), free(attended), free(k), free(v), free(gated), free(up), free(scores);
    free(xf);
    return status;
}
