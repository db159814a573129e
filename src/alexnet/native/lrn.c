/* Fused local response normalization (§3.3) over channels_last float32 data.
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
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CHANNELS 8192

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

int alexnet_lrn_forward(const float *x, float *y, long rows, int channels, int groups,
                        int size, float alpha, float beta, float k) {
    if (channels <= 0 || channels > MAX_CHANNELS || groups <= 0 || channels % groups)
        return 1;
    const int cg = channels / groups, lo = size / 2, hi = (size - 1) / 2;
    float pad[MAX_CHANNELS + 64], s[MAX_CHANNELS], inv[MAX_CHANNELS];
    memset(pad, 0, sizeof(float) * (size_t)(cg + lo + hi));
    for (long p = 0; p < rows; ++p) {
        const float *xp = x + p * channels;
        float *yp = y + p * channels;
        for (int g = 0; g < groups; ++g) {
            const float *xg = xp + g * cg;
            for (int i = 0; i < cg; ++i) pad[lo + i] = xg[i] * xg[i];
            window_sum(pad, s, cg, size);
            for (int i = 0; i < cg; ++i) inv[i] = inv_pow(k + alpha * s[i], beta);
            for (int i = 0; i < cg; ++i) yp[g * cg + i] = xg[i] * inv[i];
        }
    }
    return 0;
}

int alexnet_lrn_backward(const float *x, const float *grad, float *gx, long rows,
                         int channels, int groups, int size, float alpha, float beta, float k) {
    if (channels <= 0 || channels > MAX_CHANNELS || groups <= 0 || channels % groups)
        return 1;
    const int cg = channels / groups, lo = size / 2, hi = (size - 1) / 2;
    const float scale = 2.0f * beta * alpha;
    float pad[MAX_CHANNELS + 64], s[MAX_CHANNELS], d[MAX_CHANNELS], inv[MAX_CHANNELS];
    memset(pad, 0, sizeof(float) * (size_t)(cg + lo + hi));
    for (long p = 0; p < rows; ++p) {
        const float *xp = x + p * channels, *gp = grad + p * channels;
        float *op = gx + p * channels;
        for (int g = 0; g < groups; ++g) {
            const float *xg = xp + g * cg, *gg = gp + g * cg;
            for (int i = 0; i < cg; ++i) pad[lo + i] = xg[i] * xg[i];
            window_sum(pad, s, cg, size);
            for (int i = 0; i < cg; ++i) {
                d[i] = k + alpha * s[i];
                inv[i] = inv_pow(d[i], beta);
            }
            /* t[i] = g[i] x[i] d[i]^(-beta-1); channel j gathers t[i] for i in
             * [j - hi, j + lo]: the mirrored window, so the padding offset becomes hi. */
            for (int i = 0; i < cg; ++i) pad[hi + i] = gg[i] * xg[i] * inv[i] / d[i];
            for (int i = 0; i < hi; ++i) pad[i] = 0.0f;
            for (int i = 0; i < lo; ++i) pad[hi + cg + i] = 0.0f;
            window_sum(pad, s, cg, size);
            for (int i = 0; i < cg; ++i) op[g * cg + i] = gg[i] * inv[i] - scale * xg[i] * s[i];
            /* Restore the zero borders the forward layout expects. */
            for (int i = 0; i < lo; ++i) pad[i] = 0.0f;
            for (int i = 0; i < hi; ++i) pad[lo + cg + i] = 0.0f;
        }
    }
    return 0;
}
