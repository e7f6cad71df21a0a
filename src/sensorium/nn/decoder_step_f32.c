/* A float32 decoder's whole one-token step through its layers in one call (both builds of sensorium's kernels, on
   gemv_f32.c's float32 one-row product; gemv.py's float32_steps decides whether steps take it on this machine).
   float32 is sn.load's default on a CPU; layer by layer, a step's ~20 small torch ops a layer and the Python between
   them cost ~8 % of a Llama-1B step on 2 Zen 3 cores whose linears already stream at the read's rate (BENCHMARKS.md,
   ninth pass). The same sequence as the bf16 step (decoder_step.c): RMSNorm, q/k/v with optional biases,
   rotate-half RoPE, attention over the cache, o, residual add, RMSNorm, SwiGLU, down, residual add; each in float32
   as torch's float32 ops compute it, the sums in other orders (the RoPE and the adds bit-equal). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* transformers' Llama/Qwen2 RMSNorm in float32: weight * (x * rsqrt(mean(x^2) + eps)); the squares summed in double
   (torch sums float32 in its own blocked order: the mean agrees to a rounding) */
static void rms_norm_f32(const float *x, int64_t m, const float *weight, float *y, int64_t k, float eps) {
    for (int64_t i = 0; i < m; ++i) {
        const float *row = x + i * k;
        double squares = 0.0;
        for (int64_t j = 0; j < k; ++j) squares += (double)row[j] * row[j];
        const float scale = 1.0f / sqrtf((float)(squares / (double)k) + eps);
        for (int64_t j = 0; j < k; ++j) y[i * k + j] = weight[j] * (row[j] * scale);
    }
}

static void add_into_f32(float *x, const float *y, int64_t count) {
    for (int64_t i = 0; i < count; ++i) x[i] += y[i];
}

/* x [m = batch * tokens, width] updated in place; the layers' pointers (kernels.h's sensorium_layer) point at float32
   tensors: plain weights [n, k] (no blocks, no scales), biases or NULL, the norms' weights, and the cache [batch,
   kv_heads, length, dim], each token's k and v written to slot start + t; attention reads slots 0 .. start + tokens - 1
   under mask [batch, tokens, visible] (1 = seen) or all of them; cos and sin float32 [batch, tokens, dim]. 0, or -1
   when scratch memory could not be had or m > 4. */
int sensorium_decoder_step_f32(float *x, int64_t batch, int64_t tokens, const sensorium_layer *layers, int64_t count,
                               int64_t width, int64_t heads, int64_t kv_heads, int64_t dim, int64_t hidden,
                               int64_t length, float eps, float scale, const float *cos, const float *sin,
                               const uint8_t *mask, int64_t start, int threads) {
    const int64_t m = batch * tokens, visible = start + tokens, q_width = heads * dim, kv_width = kv_heads * dim;
    float *normed = malloc(sizeof(float) * m * width), *residual = malloc(sizeof(float) * m * width);
    float *q = malloc(sizeof(float) * m * q_width), *attended = malloc(sizeof(float) * m * q_width);
    float *k = malloc(sizeof(float) * m * kv_width), *v = malloc(sizeof(float) * m * kv_width);
    float *gated = malloc(sizeof(float) * m * hidden), *up = malloc(sizeof(float) * m * hidden);
    float *scores = malloc(sizeof(float) * batch * heads * tokens * visible);
    int status = -1;
    if (!normed || !residual || !q || !attended || !k || !v || !gated || !up || !scores) goto done;
#define F(pointer) ((const float *)(pointer))
#define LINEAR(input, weight, bias, output, n, k_)                                                                \
    if (sensorium_gemv_f32(input, m, F(weight), F(bias), output, n, k_, threads) != 0) goto done;
    for (int64_t i = 0; i < count; ++i) {
        const sensorium_layer *layer = layers + i;
        float *keys = (float *)layer->keys, *values = (float *)layer->values;
        rms_norm_f32(x, m, F(layer->attn_norm), normed, width, eps);
        LINEAR(normed, layer->q, layer->q_bias, q, q_width, width)
        LINEAR(normed, layer->k, layer->k_bias, k, kv_width, width)
        LINEAR(normed, layer->v, layer->v_bias, v, kv_width, width)
        sensorium_rope_halves_f32(q, k, cos, sin, batch, tokens, heads, kv_heads, dim);  /* decoder_step.c */
        for (int64_t b = 0; b < batch; ++b)
            for (int64_t t = 0; t < tokens; ++t)
                for (int64_t h = 0; h < kv_heads; ++h) {
                    const int64_t from = ((b * tokens + t) * kv_heads + h) * dim;
                    const int64_t to = ((b * kv_heads + h) * length + start + t) * dim;
                    memcpy(keys + to, k + from, sizeof(float) * dim);
                    memcpy(values + to, v + from, sizeof(float) * dim);
                }
        sensorium_step_attention_f32(q, keys, values, mask, attended, scores, batch, tokens, heads, kv_heads, dim,
                                     visible, length, scale, threads);
        LINEAR(attended, layer->o, NULL, residual, width, q_width)
        add_into_f32(x, residual, m * width);
        rms_norm_f32(x, m, F(layer->mlp_norm), normed, width, eps);
        LINEAR(normed, layer->gate, NULL, gated, hidden, width)
        LINEAR(normed, layer->up, NULL, up, hidden, width)
        sensorium_silu_times_f32(gated, up, m * hidden);
        LINEAR(gated, layer->down, NULL, residual, width, hidden)
        add_into_f32(x, residual, m * width);
    }
#undef LINEAR
#undef F
    status = 0;
done:
    free(normed), free(residual), free(q), free(attended), free(k), free(v), free(gated), free(up), free(scores);
    return status;
}
