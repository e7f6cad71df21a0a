/* What each flavour of sensorium's kernels provides (gemv_bf16.c: AVX512-BF16; gemv_avx2.c: AVX2 + FMA) to the
   portable decoder step (decoder_step.c), and the step's layer struct. */

#ifndef SENSORIUM_KERNELS_H
#define SENSORIUM_KERNELS_H

#include <stdint.h>

#define ROWS 4  /* rows of w per block: the one-row products' pass, and the blocked layout's rows */

/* Each one-row entry point picks its copy for m rows of x (name_m1 .. name_m4): 0, or -1 for an m with no copy */
#define BY_ROWS(name, ...)                                 \
    switch (m) {                                           \
        case 1: name##_m1(__VA_ARGS__); return 0;          \
        case 2: name##_m2(__VA_ARGS__); return 0;          \
        case 3: name##_m3(__VA_ARGS__); return 0;          \
        case 4: name##_m4(__VA_ARGS__); return 0;          \
    }                                                      \
    return -1;

int sensorium_gemv_bf16(const uint16_t *x, int64_t m, const uint16_t *w, const uint16_t *bias, uint16_t *y,
                        int64_t n, int64_t k, int blocked, int threads);
int sensorium_gemv_many_bf16(const uint16_t *x, int64_t m, int count, const uint16_t *const *weights,
                             const uint16_t *const *biases, uint16_t *const *outs, const int64_t *ns, int64_t k,
                             const int *blocked, int threads);
int sensorium_gemv_int8(const uint16_t *x, int64_t m, const int8_t *w, const uint16_t *scales, uint16_t *y,
                        int64_t n, int64_t k, float *xf, int threads);
int sensorium_gemv_int4(const uint16_t *x, int64_t m, const uint8_t *w, const uint16_t *params, uint16_t *y,
                        int64_t n, int64_t k, int64_t group, float *scratch, int threads);
/* gated = bf16(bf16(silu(gated)) * up), elementwise: SwiGLU's roundings after its two products (each already bf16) */
void sensorium_silu_times(uint16_t *gated, const uint16_t *up, int64_t count);
void sensorium_step_attention_bf16(const uint16_t *q, const uint16_t *keys, const uint16_t *values,
                                   const uint8_t *mask, uint16_t *out, float *scores, int64_t batch, int64_t tokens,
                                   int64_t heads, int64_t kv_heads, int64_t dim, int64_t visible, int64_t length,
                                   float scale, int threads);

/* float32 decoders' kernels (gemv_f32.c) and step (decoder_step_f32.c, with decoder_step.c's RoPE), both builds */
int sensorium_gemv_f32(const float *x, int64_t m, const float *w, const float *bias, float *y, int64_t n, int64_t k,
                       int threads);
void sensorium_silu_times_f32(float *gated, const float *up, int64_t count);
void sensorium_rope_halves_f32(float *q, float *k, const float *cos, const float *sin, int64_t batch, int64_t tokens,
                               int64_t heads, int64_t kv_heads, int64_t dim);
void sensorium_step_attention_f32(const float *q, const float *keys, const float *values, const uint8_t *mask,
                                  float *out, float *scores, int64_t batch, int64_t tokens, int64_t heads,
                                  int64_t kv_heads, int64_t dim, int64_t visible, int64_t length, float scale,
                                  int threads);

/* one decoder layer for sensorium_decoder_step_bf16 (decoder_step.c), and for sensorium_decoder_step_f32
   (decoder_step_f32.c), whose layers' pointers point at float32 tensors instead (one struct: one layout for gemv.py
   to fill) */
typedef struct {
    const uint16_t *attn_norm, *q, *k, *v, *q_bias, *k_bias, *v_bias, *o, *mlp_norm, *gate, *up, *down;
    uint16_t *keys, *values; /* this layer's cache, [batch, kv_heads, length, dim] */
    /* int8 layers (nn/quant.py): each linear's bf16 scales, its weight then int8; NULL: bf16 weights */
    const uint16_t *q_scales, *k_scales, *v_scales, *o_scales, *gate_scales, *up_scales, *down_scales;
    /* which bf16 weights are in blocks of rows (gemv.py: to_blocks), one bit each: q 1, k 2, v 4, o 8, gate 16,
       up 32, down 64 */
    int64_t blocked;
    /* int4 layers (nn/quant.py in sensorium's layout, gemv_int4.c): each linear's group, q .. down, its weight then
       int4 and its scales (scale, zero) [n, k / group, 2]; 0: not int4 */
    int64_t int4_groups[7];
} sensorium_layer;

#endif
