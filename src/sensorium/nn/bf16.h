/* bf16 <-> float32 conversions shared by sensorium's C kernels (gemv_bf16.c, attention_bf16.c). */

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

static inline __m512 load_bf16(const uint16_t *p, __mmask16 mask) {  /* 16 bf16 -> float32 (masked lanes 0) */
    __m256i raw = _mm256_maskz_loadu_epi16(mask, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

#endif
