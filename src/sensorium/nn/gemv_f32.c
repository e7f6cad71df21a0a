/* float32 decoders' kernels on 8 lanes (AVX2 + FMA), in both builds of sensorium's kernels (gemv.py decides per
   machine whether float32 steps take them: `float32_steps`): the one-row product, and the step attention and SwiGLU's
   silu of the float32 step in one call (decoder_step_f32.c). */

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "lanes8.h"

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

int sensorium_gemv_f32(const float *x, int64_t m, const float *w, const float *bias, float *y, int64_t n, int64_t k,
                       int threads) {
    BY_ROWS(gemv_f32, x, w, bias, y, n, k, threads)
}

/* STEP_ATTENTION's DOT for float32 keys: 8 channels a step, the lanes summed, the last dim % 8 one by one */
static inline float dot_f32(const float *query, const float *key, int64_t dim) {
    __m256 acc = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 8 <= dim; c += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(query + c), _mm256_loadu_ps(key + c), acc);
    float dot = sum_8(acc);
    for (; c < dim; ++c) dot += query[c] * key[c];
    return dot;
}

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
