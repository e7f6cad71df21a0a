/* What sensorium's C kernels share: bf16 <-> float32 conversions, and in the AVX512 flavour (gemv_bf16.c,
   attention_bf16.c) their 16-lane forms and a vector e^x. */

#ifndef SENSORIUM_BF16_H
#define SENSORIUM_BF16_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

static inline float from_bf16(uint16_t value) {
    uint32_t bits = (uint32_t)value << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t to_bf16(float value) {  /* round to nearest even, as torch's casts; a NaN stays a NaN */
    uint32_t bits;
    memcpy(&bits, &value, 4);
    if ((bits & 0x7fffffff) > 0x7f800000) return (uint16_t)((bits >> 16) | 0x40);
    bits += 0x7fff + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

#ifdef __AVX512F__  /* the AVX512 flavour's vector forms (gemv_bf16.c, attention_bf16.c) */
static inline __m512 load_bf16(const uint16_t *p, __mmask16 mask) {  /* 16 bf16 -> float32 (masked lanes 0) */
    __m256i raw = _mm256_maskz_loadu_epi16(mask, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

static inline __m256i to_bf16_16(__m512 x) {  /* 16 floats -> bf16, round to nearest even, NaN kept: as to_bf16 */
    const __m512i bits = _mm512_castps_si512(x);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    rounded = _mm512_mask_or_epi32(rounded, nan, bits, _mm512_set1_epi32(0x400000));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}

/* e^x within 1.6e-7 (~2 ulp) for x <= 88 (inf above, 0 below -104): 2^n * p(r), |r| <= ln2 / 2 */
static inline __m512 exp_16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));  /* below it 2^n underflows to 0 either way; -inf -> 0 */
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-06f), r);
    /* degree 6, fitted to e^r's relative error on the reduced range (a degree-7 Taylor series is no closer in
       float32 and takes one more step) */
    __m512 p = _mm512_set1_ps(1.38294208e-03f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.37477110e-03f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.16683592e-02f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.66664213e-01f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.99999911e-01f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}
#endif

#endif
