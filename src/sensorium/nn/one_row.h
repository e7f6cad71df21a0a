/* The one-row products' entry points, the same in each build of the kernels: included by gemv_bf16.c (AVX512-BF16)
   and gemv_avx2.c (AVX2) after each has defined its own dot_block (a block of 4 rows of w against m <= 4 rows of x,
   float32 sums) and gemv_int8_m1 .. gemv_int8_m4. */

#ifndef SENSORIUM_ONE_ROW_H
#define SENSORIUM_ONE_ROW_H

/* One or several matrices sharing x (a layer's q, k and v) in one parallel region: their blocks are numbered in
   turn and split across threads together. outs[j] is [m, ns[j]]. m is a constant in each copy, so the compiler
   keeps the accumulators in registers. */
#define GEMV_MANY(M)                                                                                              \
    static void gemv_many_m##M(const uint16_t *x, int count, const uint16_t *const *weights,                     \
                               const uint16_t *const *biases, uint16_t *const *outs, const int64_t *ns, int64_t k,\
                               const int *blocked, int threads) {                                                                     \
        int64_t total = 0;                                                                                        \
        for (int j = 0; j < count; ++j) total += (ns[j] + ROWS - 1) / ROWS;                                      \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                                        \
        for (int64_t b = 0; b < total; ++b) {                                                                     \
            int j = 0;                                                                                            \
            int64_t local = b;                                                                                    \
            while (local >= (ns[j] + ROWS - 1) / ROWS) local -= (ns[j++] + ROWS - 1) / ROWS;                      \
            const int64_t n = ns[j], first = local * ROWS;                                                        \
            const int rows = n - first < ROWS ? (int)(n - first) : ROWS;                                          \
            float out[ROWS][4];                                                                                   \
            if (blocked && blocked[j]) dot_block(x, M, weights[j], k, first, rows, 1, out);                       \
            else dot_block(x, M, weights[j], k, first, rows, 0, out);                                             \
            for (int r = 0; r < rows; ++r)                                                                        \
                for (int i = 0; i < M; ++i) /* no bias: nothing added (a -0.0 stays one) */                        \
                    outs[j][i * n + first + r] = to_bf16(biases[j] ? out[r][i] + from_bf16(biases[j][first + r])  \
                                                                   : out[r][i]);                                  \
        }                                                                                                         \
    }

GEMV_MANY(1)
GEMV_MANY(2)
GEMV_MANY(3)
GEMV_MANY(4)


int sensorium_gemv_bf16(const uint16_t *x, int64_t m, const uint16_t *w, const uint16_t *bias, uint16_t *y,
                        int64_t n, int64_t k, int blocked, int threads) {
    BY_ROWS(gemv_many, x, 1, &w, &bias, &y, &n, k, &blocked, threads)
}

int sensorium_gemv_many_bf16(const uint16_t *x, int64_t m, int count, const uint16_t *const *weights,
                             const uint16_t *const *biases, uint16_t *const *outs, const int64_t *ns, int64_t k,
                             const int *blocked, int threads) {
    BY_ROWS(gemv_many, x, count, weights, biases, outs, ns, k, blocked, threads)
}

/* xf: a float32 scratch of m * k (x widened once, not once per block). */
int sensorium_gemv_int8(const uint16_t *x, int64_t m, const int8_t *w, const uint16_t *scales, uint16_t *y,
                        int64_t n, int64_t k, float *xf, int threads) {
    for (int64_t i = 0; i < m * k; ++i) xf[i] = from_bf16(x[i]);
    BY_ROWS(gemv_int8, xf, w, scales, y, n, k, threads)
}

#endif
