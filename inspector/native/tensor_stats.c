/* Summary statistics of one tensor's values, in C, for the dump writer (inspector/native/tensor_stats.py).
 *
 * Why: a capture-all stores thousands of tensors per run, most of a few hundred values, where numpy's per-call
 * overhead is the cost: 48 us for a 768-value tensor, 7 us here, and half numpy's time over a whole run's
 * values (docs/performance.md).  Called through ctypes, which lets the GIL go, it runs beside the Python
 * threads instead of holding them up.
 *
 * What: the same quantities as TensorStats.of (inspector/dump/format.py), over the finite values: min, max,
 * mean and the population standard deviation, plus the count of NaN and of infinite values.  The values are
 * widened to double a chunk at a time; each chunk's mean and squared deviations are taken in two passes over
 * it while it is in the first-level cache, and the chunks are combined by Chan, Golub and LeVeque's pairwise
 * update, so a large common offset does not cancel and the tensor is read from memory once.
 *
 * Compiled into the hook's library (inspector/native/build.py) but independent of it: no ggml, no state. */

#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
/* x86-64 paths for instructions past the baseline the library is built for, each used where the CPU says it has
 * them.  F16C (every x86-64 since 2012) converts four halves in one instruction, where bit moving took 2.4 ns a
 * value, most of a capture-all's statistics time (its KV-cache rows are float16); AVX takes the two passes four
 * doubles at a time instead of SSE2's two. */
#define HAVE_X86_PATHS 1
#endif

enum stats_type { STATS_F32 = 0, STATS_F16 = 1, STATS_I32 = 2 };

/* Values widened per chunk: small enough to stay in the first-level cache for the chunk's second pass. */
#define CHUNK 512

struct moments {
    double  low, high, mean, m2;
    int64_t finite, n_nan, n_inf;
};

/* IEEE half to float (exact), subnormals, infinities and NaN included: bits moved, no library call. */
static float half_to_float(uint16_t half) {
    uint32_t sign = (uint32_t) (half & 0x8000u) << 16, exponent = (half >> 10) & 0x1fu, mantissa = half & 0x3ffu;
    uint32_t bits;
    if (exponent == 0) { /* zero or subnormal: mantissa * 2^-24, exact in float */
        float magnitude = (float) mantissa * 0x1p-24f;
        return sign != 0 ? -magnitude : magnitude;
    }
    bits = sign | (exponent == 0x1fu ? 0x7f800000u : (exponent + 112u) << 23) | (mantissa << 13);
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

#ifdef HAVE_X86_PATHS
__attribute__((target("f16c"))) static int widen_f16c(const uint16_t * values, int count, double * out) {
    int i = 0;
    for (; i + 4 <= count; i += 4) {
        __m128 four = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *) (values + i)));
        _mm_storeu_pd(out + i, _mm_cvtps_pd(four));
        _mm_storeu_pd(out + i + 2, _mm_cvtps_pd(_mm_movehl_ps(four, four)));
    }
    return i;
}

static int has_f16c(void) {
    static int known = -1;
    if (known < 0) {
        known = __builtin_cpu_supports("f16c") ? 1 : 0;
    }
    return known;
}

static int has_avx(void) {
    static int known = -1;
    if (known < 0) {
        known = __builtin_cpu_supports("avx") ? 1 : 0;
    }
    return known;
}

__attribute__((target("avx"))) static int widen_f32_avx(const float * values, int count, double * out) {
    int i = 0;
    for (; i + 4 <= count; i += 4) {
        _mm256_storeu_pd(out + i, _mm256_cvtps_pd(_mm_loadu_ps(values + i)));
    }
    return i;
}

/* The two halves of `v` added, as SSE2's two lanes. */
__attribute__((target("avx"))) static __m128d fold_add(__m256d v) {
    return _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
}

/* first_pass's vector part, four doubles a step: how many values it took, their sums, minima and maxima as
 * two lanes each. */
__attribute__((target("avx"))) static int first_pass_avx(const double * values, int count, __m128d * sum,
                                                          __m128d * low, __m128d * high) {
    __m256d sum_a = _mm256_setzero_pd(), sum_b = sum_a, low_a = _mm256_set1_pd(INFINITY), low_b = low_a;
    __m256d high_a = _mm256_set1_pd(-INFINITY), high_b = high_a;
    int     i = 0;
    for (; i + 8 <= count; i += 8) {
        __m256d a = _mm256_loadu_pd(values + i), b = _mm256_loadu_pd(values + i + 4);
        sum_a = _mm256_add_pd(sum_a, a);
        sum_b = _mm256_add_pd(sum_b, b);
        low_a = _mm256_min_pd(low_a, a);
        low_b = _mm256_min_pd(low_b, b);
        high_a = _mm256_max_pd(high_a, a);
        high_b = _mm256_max_pd(high_b, b);
    }
    __m256d lows = _mm256_min_pd(low_a, low_b), highs = _mm256_max_pd(high_a, high_b);
    *sum = fold_add(_mm256_add_pd(sum_a, sum_b));
    *low = _mm_min_pd(_mm256_castpd256_pd128(lows), _mm256_extractf128_pd(lows, 1));
    *high = _mm_max_pd(_mm256_castpd256_pd128(highs), _mm256_extractf128_pd(highs, 1));
    return i;
}

/* second_pass's vector part: how many values it took, their squared deviations and deviations as two lanes. */
__attribute__((target("avx"))) static int second_pass_avx(const double * values, int count, double mean,
                                                           __m128d * squares, __m128d * deviations) {
    __m256d squares_a = _mm256_setzero_pd(), squares_b = squares_a, deviations_a = squares_a;
    __m256d deviations_b = squares_a, centre = _mm256_set1_pd(mean);
    int     i = 0;
    for (; i + 8 <= count; i += 8) {
        __m256d a = _mm256_sub_pd(_mm256_loadu_pd(values + i), centre);
        __m256d b = _mm256_sub_pd(_mm256_loadu_pd(values + i + 4), centre);
        squares_a = _mm256_add_pd(squares_a, _mm256_mul_pd(a, a));
        squares_b = _mm256_add_pd(squares_b, _mm256_mul_pd(b, b));
        deviations_a = _mm256_add_pd(deviations_a, a);
        deviations_b = _mm256_add_pd(deviations_b, b);
    }
    *squares = fold_add(_mm256_add_pd(squares_a, squares_b));
    *deviations = fold_add(_mm256_add_pd(deviations_a, deviations_b));
    return i;
}
#endif

static void widen(const void * data, int type, int64_t start, int count, double * out) {
    if (type == STATS_F32) {
        const float * values = (const float *) data + start;
        int           i = 0;
#ifdef HAVE_X86_PATHS
        if (has_avx()) {
            i = widen_f32_avx(values, count, out);
        }
#endif
#ifdef __SSE2__
        for (; i + 4 <= count; i += 4) {
            __m128 four = _mm_loadu_ps(values + i);
            _mm_storeu_pd(out + i, _mm_cvtps_pd(four));
            _mm_storeu_pd(out + i + 2, _mm_cvtps_pd(_mm_movehl_ps(four, four)));
        }
#endif
        for (; i < count; i++) {
            out[i] = values[i];
        }
    } else if (type == STATS_F16) {
        const uint16_t * values = (const uint16_t *) data + start;
        int              i = 0;
#ifdef HAVE_X86_PATHS
        if (has_f16c()) {
            i = widen_f16c(values, count, out);
        }
#endif
        for (; i < count; i++) {
            out[i] = half_to_float(values[i]);
        }
    } else {
        const int32_t * values = (const int32_t *) data + start;
        for (int i = 0; i < count; i++) {
            out[i] = values[i];
        }
    }
}

/* Moves the finite values of `values` to its front, counting the others; returns how many are finite. */
static int keep_finite(double * values, int count, struct moments * m) {
    int kept = 0;
    for (int i = 0; i < count; i++) {
        if (isfinite(values[i])) {
            values[kept++] = values[i];
        } else if (isnan(values[i])) {
            m->n_nan++;
        } else {
            m->n_inf++;
        }
    }
    return kept;
}

/* Four independent running sums, minima and maxima, in registers: the adds of a pass do not wait on each other. */
#define STEP(lane, x)                                \
    do {                                             \
        double value_ = (x);                         \
        sum##lane += value_;                         \
        low##lane = value_ < low##lane ? value_ : low##lane;     \
        high##lane = value_ > high##lane ? value_ : high##lane;  \
    } while (0)

#define DEVIATE(lane, x)                             \
    do {                                             \
        double deviation_ = (x) - mean;              \
        squares##lane += deviation_ * deviation_;    \
        residual##lane += deviation_;                \
    } while (0)

#ifdef __SSE2__
/* The two lanes of `v`, into the first two of a pass's four scalar accumulators. */
static void split_lanes(__m128d v, double * first, double * second) {
    double lanes[2];
    _mm_storeu_pd(lanes, v);
    *first = lanes[0];
    *second = lanes[1];
}
#endif

/* The chunk's sum, minimum and maximum (NaN and infinities make the sum non-finite: the caller then drops them). */
static double first_pass(const double * values, int count, double * low, double * high) {
    double sum0 = 0, sum1 = 0, sum2 = 0, sum3 = 0;
    double low0 = INFINITY, low1 = INFINITY, low2 = INFINITY, low3 = INFINITY;
    double high0 = -INFINITY, high1 = -INFINITY, high2 = -INFINITY, high3 = -INFINITY;
    int    i = 0;
#ifdef __SSE2__
    __m128d sum_a = _mm_setzero_pd(), sum_b = sum_a, low_a = _mm_set1_pd(INFINITY), low_b = low_a;
    __m128d high_a = _mm_set1_pd(-INFINITY), high_b = high_a;
#ifdef HAVE_X86_PATHS
    if (has_avx()) {
        i = first_pass_avx(values, count, &sum_a, &low_a, &high_a);
    }
#endif
    for (; i + 4 <= count; i += 4) {
        __m128d a = _mm_loadu_pd(values + i), b = _mm_loadu_pd(values + i + 2);
        sum_a = _mm_add_pd(sum_a, a);
        sum_b = _mm_add_pd(sum_b, b);
        low_a = _mm_min_pd(low_a, a);
        low_b = _mm_min_pd(low_b, b);
        high_a = _mm_max_pd(high_a, a);
        high_b = _mm_max_pd(high_b, b);
    }
    split_lanes(_mm_add_pd(sum_a, sum_b), &sum0, &sum1);
    split_lanes(_mm_min_pd(low_a, low_b), &low0, &low1);
    split_lanes(_mm_max_pd(high_a, high_b), &high0, &high1);
#endif
    for (; i + 4 <= count; i += 4) {
        STEP(0, values[i]);
        STEP(1, values[i + 1]);
        STEP(2, values[i + 2]);
        STEP(3, values[i + 3]);
    }
    for (; i < count; i++) {
        STEP(0, values[i]);
    }
    *low = fmin(fmin(low0, low1), fmin(low2, low3));
    *high = fmax(fmax(high0, high1), fmax(high2, high3));
    return (sum0 + sum1) + (sum2 + sum3);
}

/* The chunk's sum of squared deviations from `mean`, and of the deviations themselves (`residual`). */
static double second_pass(const double * values, int count, double mean, double * residual) {
    double squares0 = 0, squares1 = 0, squares2 = 0, squares3 = 0;
    double residual0 = 0, residual1 = 0, residual2 = 0, residual3 = 0;
    int    i = 0;
#ifdef __SSE2__
    __m128d squares_a = _mm_setzero_pd(), squares_b = squares_a, deviations_a = squares_a, deviations_b = squares_a;
    __m128d centre = _mm_set1_pd(mean);
#ifdef HAVE_X86_PATHS
    if (has_avx()) {
        i = second_pass_avx(values, count, mean, &squares_a, &deviations_a);
    }
#endif
    for (; i + 4 <= count; i += 4) {
        __m128d a = _mm_sub_pd(_mm_loadu_pd(values + i), centre), b = _mm_sub_pd(_mm_loadu_pd(values + i + 2), centre);
        squares_a = _mm_add_pd(squares_a, _mm_mul_pd(a, a));
        squares_b = _mm_add_pd(squares_b, _mm_mul_pd(b, b));
        deviations_a = _mm_add_pd(deviations_a, a);
        deviations_b = _mm_add_pd(deviations_b, b);
    }
    split_lanes(_mm_add_pd(squares_a, squares_b), &squares0, &squares1);
    split_lanes(_mm_add_pd(deviations_a, deviations_b), &residual0, &residual1);
#endif
    for (; i + 4 <= count; i += 4) {
        DEVIATE(0, values[i]);
        DEVIATE(1, values[i + 1]);
        DEVIATE(2, values[i + 2]);
        DEVIATE(3, values[i + 3]);
    }
    for (; i < count; i++) {
        DEVIATE(0, values[i]);
    }
    *residual = (residual0 + residual1) + (residual2 + residual3);
    return (squares0 + squares1) + (squares2 + squares3);
}

/* One chunk's values combined into `m`. */
static void add_chunk(struct moments * m, double * values, int count) {
    double low, high, chunk_sum = first_pass(values, count, &low, &high);
    if (!isfinite(chunk_sum)) { /* a NaN or an infinity among them */
        count = keep_finite(values, count, m);
        if (count > 0) {
            add_chunk(m, values, count);
        }
        return;
    }
    double mean = chunk_sum / count, r;
    double chunk_m2 = second_pass(values, count, mean, &r) - r * r / count;
    mean += r / count;
    m->low = low < m->low ? low : m->low;
    m->high = high > m->high ? high : m->high;
    int64_t combined = m->finite + count;
    double  delta = mean - m->mean;
    m->mean += delta * count / (double) combined;
    m->m2 += (chunk_m2 > 0 ? chunk_m2 : 0) + delta * delta * (double) m->finite * count / (double) combined;
    m->finite = combined;
}

/* Writes min, max, mean and std into `moments` and the NaN and infinity counts into `counts`; all four moments
 * are NaN when no value is finite.  Returns 0, or -1 for a type it does not know (the caller uses numpy). */
int ggml_inspector_tensor_stats(const void * data, int64_t n, int type, double moments[4], int64_t counts[2]) {
    if (type != STATS_F32 && type != STATS_F16 && type != STATS_I32) {
        return -1;
    }
    struct moments m = {INFINITY, -INFINITY, 0, 0, 0, 0, 0};
    double         values[CHUNK];
    for (int64_t start = 0; start < n; start += CHUNK) {
        int count = n - start < CHUNK ? (int) (n - start) : CHUNK;
        widen(data, type, start, count, values);
        add_chunk(&m, values, count);
    }
    counts[0] = m.n_nan;
    counts[1] = m.n_inf;
    if (m.finite == 0) {
        moments[0] = moments[1] = moments[2] = moments[3] = NAN;
        return 0;
    }
    moments[0] = m.low;
    moments[1] = m.high;
    moments[2] = m.mean;
    moments[3] = sqrt(m.m2 / (double) m.finite);
    return 0;
}
