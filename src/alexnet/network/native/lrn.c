/* Fused local response normalization (§3.3) over channels_last float32 or bfloat16 data.
 *
 * Each of the P rows holds the C channel values of one pixel, contiguous. Channels split
 * into `groups` equal towers; a window never crosses a tower. Window of channel i:
 * [i - size/2, i + (size-1)/2], clipped (PyTorch's convention).
 *
 *   d[i] = k + alpha * sum_{j in W(i)} x[j]^2,   y[i] = x[i] * d[i]^-beta
 *   gx[j] = g[j] d[j]^-beta - 2 beta alpha x[j] sum_{i: j in W(i)} g[i] x[i] d[i]^(-beta-1)
 *
 * The backward recomputes d from x instead of storing it: one read of x and g and one
 * write of gx, rather than four saved tensors. Both passes are deterministic.
 *
 * The bf16 entry points (uint16_t storage) run the same float32 arithmetic on the widened
 * values and round each result once to nearest even: bit for bit the fp32 kernel applied
 * to x.float(), then rounded. Storage only changes; the math is shared code.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CHANNELS 8192
#define MAX_WINDOW_PAD 64

/* The shared bodies take the storage type as a constant flag; forcing them inline makes
 * each entry point a specialised copy with the flag folded away (and vectorisable). */
#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16; /* exact: bf16 is the top half of a float */
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    /* NaN: keep sign and top payload bits, set the quiet bit; rounding could otherwise
     * carry a NaN's low payload into the exponent and turn it into an infinity. */
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    /* Round to nearest, ties to even; overflow rounds to infinity as it should. */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float load(const void *p, long i, int bf16) {
    return bf16 ? bf16_to_float(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store(void *p, long i, float v, int bf16) {
    if (bf16)
        ((uint16_t *)p)[i] = float_to_bf16(v);
    else
        ((float *)p)[i] = v;
}

static inline float inv_pow(float d, float beta) {
    if (beta == 0.75f) {
        float r = 1.0f / sqrtf(d);
        return r * sqrtf(r);
    }
    return powf(d, -beta);
}

/* pad[lo + j] = v[j] for j in [0, n), zeros around; s[i] = sum_{t < size} pad[i + t]. */
static inline void window_sum(const float *pad, float *s, int n, int size) {
    for (int i = 0; i < n; ++i) s[i] = 0.0f;
    for (int t = 0; t < size; ++t)
        for (int i = 0; i < n; ++i) s[i] += pad[i + t];
}

static ALWAYS_INLINE int lrn_forward(const void *x, void *y, long rows, int channels,
                                     int groups, int size, float alpha, float beta, float k,
                                     int bf16) {
    if (channels <= 0 || channels > MAX_CHANNELS || groups <= 0 || channels % groups ||
        size < 1 || size > MAX_WINDOW_PAD + 1)
        return 1; /* the row buffers below hold MAX_CHANNELS + MAX_WINDOW_PAD values */
    const int cg = channels / groups, lo = size / 2, hi = (size - 1) / 2;
    float pad[MAX_CHANNELS + MAX_WINDOW_PAD], s[MAX_CHANNELS], inv[MAX_CHANNELS];
    memset(pad, 0, sizeof(float) * (size_t)(cg + lo + hi));
    for (long p = 0; p < rows; ++p) {
        for (int g = 0; g < groups; ++g) {
            const long o = p * channels + g * cg; /* first element of this tower */
            for (int i = 0; i < cg; ++i) {
                const float xi = load(x, o + i, bf16);
                pad[lo + i] = xi * xi;
            }
            window_sum(pad, s, cg, size);
            for (int i = 0; i < cg; ++i) inv[i] = inv_pow(k + alpha * s[i], beta);
            for (int i = 0; i < cg; ++i) store(y, o + i, load(x, o + i, bf16) * inv[i], bf16);
        }
    }
    return 0;
}

static ALWAYS_INLINE int lrn_backward(const void *x, const void *grad, void *gx, long rows,
                                      int channels, int groups, int size, float alpha,
                                      float beta, float k, int bf16) {
    if (channels <= 0 || channels > MAX_CHANNELS || groups <= 0 || channels % groups ||
        size < 1 || size > MAX_WINDOW_PAD + 1)
        return 1; /* the row buffers below hold MAX_CHANNELS + MAX_WINDOW_PAD values */
    const int cg = channels / groups, lo = size / 2, hi = (size - 1) / 2;
    const float scale = 2.0f * beta * alpha;
    float pad[MAX_CHANNELS + MAX_WINDOW_PAD], s[MAX_CHANNELS], d[MAX_CHANNELS], inv[MAX_CHANNELS];
    memset(pad, 0, sizeof(float) * (size_t)(cg + lo + hi));
    for (long p = 0; p < rows; ++p) {
        for (int g = 0; g < groups; ++g) {
            const long o = p * channels + g * cg;
            for (int i = 0; i < cg; ++i) {
                const float xi = load(x, o + i, bf16);
                pad[lo + i] = xi * xi;
            }
            window_sum(pad, s, cg, size);
            for (int i = 0; i < cg; ++i) {
                d[i] = k + alpha * s[i];
                inv[i] = inv_pow(d[i], beta);
            }
            /* t[i] = g[i] x[i] d[i]^(-beta-1); channel j gathers t[i] for i in
             * [j - hi, j + lo]: the mirrored window, so the padding offset becomes hi. */
            for (int i = 0; i < cg; ++i)
                pad[hi + i] = load(grad, o + i, bf16) * load(x, o + i, bf16) * inv[i] / d[i];
            for (int i = 0; i < hi; ++i) pad[i] = 0.0f;
            for (int i = 0; i < lo; ++i) pad[hi + cg + i] = 0.0f;
            window_sum(pad, s, cg, size);
            for (int i = 0; i < cg; ++i) {
                const float gi = load(grad, o + i, bf16), xi = load(x, o + i, bf16);
                store(gx, o + i, gi * inv[i] - scale * xi * s[i], bf16);
            }
            /* Restore the zero borders the forward layout expects. */
            for (int i = 0; i < lo; ++i) pad[i] = 0.0f;
            for (int i = 0; i < hi; ++i) pad[lo + cg + i] = 0.0f;
        }
    }
    return 0;
}

int alexnet_lrn_forward(const float *x, float *y, long rows, int channels, int groups,
                        int size, float alpha, float beta, float k) {
    return lrn_forward(x, y, rows, channels, groups, size, alpha, beta, k, 0);
}

int alexnet_lrn_backward(const float *x, const float *grad, float *gx, long rows,
                         int channels, int groups, int size, float alpha, float beta, float k) {
    return lrn_backward(x, grad, gx, rows, channels, groups, size, alpha, beta, k, 0);
}

int alexnet_lrn_forward_bf16(const uint16_t *x, uint16_t *y, long rows, int channels,
                             int groups, int size, float alpha, float beta, float k) {
    return lrn_forward(x, y, rows, channels, groups, size, alpha, beta, k, 1);
}

int alexnet_lrn_backward_bf16(const uint16_t *x, const uint16_t *grad, uint16_t *gx, long rows,
                              int channels, int groups, int size, float alpha, float beta,
                              float k) {
    return lrn_backward(x, grad, gx, rows, channels, groups, size, alpha, beta, k, 1);
}
