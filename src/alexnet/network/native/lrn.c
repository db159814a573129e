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
 * write of gx, rather than four saved tensors. Both passes are deterministic, and give the
 * same bits however the rows are split into calls (threads) or blocks (BLOCK_WIDTH).
 *
 * With `relu` set, x is the pre-activation and the kernels compute the LRN of max(x, 0),
 * and in the backward the gradient with respect to x (zero where x <= 0): the ReLU in front
 * of each LRN (§3.1, §3.3) folded into the same passes, bit for bit ReLU then LRN, without
 * the ReLU's own read and write of the whole tensor each way.
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

/* x[i], through the ReLU when relu is set: x < 0 gives 0; -0 and NaN pass, as torch.relu. */
static inline float load_act(const void *p, long i, int bf16, int relu) {
    const float v = load(p, i, bf16);
    return relu && v < 0.0f ? 0.0f : v;
}

/* The gradient g of the LRN's input, passed back through the ReLU when relu is set: zero
 * where x <= 0, as torch's threshold_backward on the ReLU's output. */
static inline float relu_grad(float x, float g, int relu) {
    return relu && x <= 0.0f ? 0.0f : g;
}

static inline void store(void *p, long i, float v, int bf16) {
    if (bf16)
        ((uint16_t *)p)[i] = float_to_bf16(v);
    else
        ((float *)p)[i] = v;
}

/* d^-0.75, the paper's beta, with square roots only: r = d^-1/2, d^-3/4 = r sqrt(r). */
static ALWAYS_INLINE float inv_pow_075(float d) {
    const float r = 1.0f / sqrtf(d);
    return r * sqrtf(r);
}

/* dst[i] = act(x[o + i])^2: a row's squares, for the window sums. */
static ALWAYS_INLINE void squares(const void *x, long o, float *dst, int n, int bf16, int relu) {
    for (int i = 0; i < n; ++i) {
        const float xi = load_act(x, o + i, bf16, relu);
        dst[i] = xi * xi;
    }
}

/* inv[i] = (k + alpha s[i])^-beta, and d[i] = k + alpha s[i] where d is given. The beta
 * test sits outside the loops: a call to powf inside one keeps the compiler from
 * vectorising it. */
static inline void inv_pow_row(const float *s, float *d, float *inv, int n, float k,
                               float alpha, float beta) {
    if (beta == 0.75f) {
        for (int i = 0; i < n; ++i) {
            const float di = k + alpha * s[i];
            if (d) d[i] = di;
            inv[i] = inv_pow_075(di);
        }
    } else {
        for (int i = 0; i < n; ++i) {
            const float di = k + alpha * s[i];
            if (d) d[i] = di;
            inv[i] = powf(di, -beta);
        }
    }
}

/* keep[t * channels + i] is all ones when the t-th term of channel i's window, channel
 * i - first + t, exists and lies in channel i's tower, zero otherwise. first = lo for the
 * forward window, hi for the backward's mirrored one. NULL when out of memory. */
static uint32_t *window_masks(int channels, int cg, int size, int first) {
    uint32_t *keep = malloc(sizeof(uint32_t) * (size_t)size * (size_t)channels);
    if (!keep) return NULL;
    for (int t = 0; t < size; ++t)
        for (int i = 0; i < channels; ++i) {
            const int j = i - first + t, g0 = i / cg * cg;
            keep[t * channels + i] = j >= g0 && j < g0 + cg ? 0xffffffffu : 0u;
        }
    return keep;
}

/* s[i] = sum_{t < size} pad[i + t] over the terms keep allows, in increasing t: the same
 * additions in the same order as a zero-padded window within one tower. A whole row (all
 * towers) at a time: long loops that vectorise, instead of short ones per tower. */
static inline void window_sum(const float *pad, const uint32_t *keep, float *s, int n, int size) {
    for (int i = 0; i < n; ++i) s[i] = 0.0f;
    for (int t = 0; t < size; ++t) {
        const uint32_t *kt = keep + (long)t * n;
        for (int i = 0; i < n; ++i) {
            uint32_t u;
            float v;
            memcpy(&u, pad + i + t, sizeof u);
            u &= kt[i]; /* all ones or zero: a select that vectorises as one AND */
            memcpy(&v, &u, sizeof v);
            s[i] += v;
        }
    }
}

/* One window sum at channel i, the terms in increasing t as window_sum adds them; with a
 * constant size the compiler unrolls it and vectorises the loop over i around it. */
static ALWAYS_INLINE float window_at(const float *pad, const uint32_t *keep, int n, int i,
                                     int size) {
    float s = 0.0f;
    for (int t = 0; t < size; ++t) {
        uint32_t u;
        float v;
        memcpy(&u, pad + i + t, sizeof u);
        u &= keep[(long)t * n + i];
        memcpy(&v, &u, sizeof v);
        s += v;
    }
    return s;
}

static inline int bad_shape(int channels, int groups, int size) {
    /* The row buffers below hold MAX_CHANNELS + MAX_WINDOW_PAD values. */
    return channels <= 0 || channels > MAX_CHANNELS || groups <= 0 || channels % groups ||
           size < 1 || size > MAX_WINDOW_PAD + 1;
}

/* The loops below run over BLOCK_WIDTH values at a time: several pixels' rows back to back
 * are one wide row whose towers are each pixel's towers (the masks keep every window
 * inside its own), so short rows (96 channels) do not pay a loop's set-up per tower. */
#define BLOCK_WIDTH 1024

static inline int block_rows(int channels) {
    return channels >= BLOCK_WIDTH ? 1 : BLOCK_WIDTH / channels;
}

/* Scratch rows for one call: pad (squares, then the backward's t, between window borders;
 * MAX_CHANNELS + MAX_WINDOW_PAD floats), s, d and inv (MAX_CHANNELS each). On the stack in
 * the plain kernels, malloc'd in the pooled ones. */
typedef struct {
    float pad[MAX_CHANNELS + MAX_WINDOW_PAD], s[MAX_CHANNELS], d[MAX_CHANNELS],
        inv[MAX_CHANNELS];
} scratch_t;

/* One row of `width` values (whole pixels' rows back to back): y[yo + i] from x[xo + i].
 * keep: window_masks(width, cg, size, size / 2). */
static ALWAYS_INLINE void forward_row(const void *x, long xo, void *y, long yo, int width,
                                      const uint32_t *keep, scratch_t *w, int size, float alpha,
                                      float beta, float k, int bf16, int relu) {
    const int lo = size / 2;
    squares(x, xo, w->pad + lo, width, bf16, relu);
    if (size == 5 && beta == 0.75f) {
        /* The paper's n and beta: the window sum fused into the loop that uses it (one
         * pass over the row instead of eight), the same operations in the same order. */
        for (int i = 0; i < width; ++i) {
            const float di = k + alpha * window_at(w->pad, keep, width, i, 5);
            store(y, yo + i, load_act(x, xo + i, bf16, relu) * inv_pow_075(di), bf16);
        }
        return;
    }
    window_sum(w->pad, keep, w->s, width, size);
    inv_pow_row(w->s, NULL, w->inv, width, k, alpha, beta);
    for (int i = 0; i < width; ++i)
        store(y, yo + i, load_act(x, xo + i, bf16, relu) * w->inv[i], bf16);
}

/* One row's gradient: gx[gxo + i] from x[xo + i] and grad[go + i]. keep_t: the mirrored
 * window's masks, window_masks(width, cg, size, (size - 1) / 2). */
static ALWAYS_INLINE void backward_row(const void *x, long xo, const void *grad, long go,
                                       void *gx, long gxo, int width, const uint32_t *keep,
                                       const uint32_t *keep_t, scratch_t *w, int size,
                                       float alpha, float beta, float k, int bf16, int relu) {
    const int lo = size / 2, hi = (size - 1) / 2;
    const float scale = 2.0f * beta * alpha;
    float *pad = w->pad, *s = w->s, *d = w->d, *inv = w->inv;
    squares(x, xo, pad + lo, width, bf16, relu);
    if (size == 5 && beta == 0.75f) {
        for (int i = 0; i < width; ++i) {
            d[i] = k + alpha * window_at(pad, keep, width, i, 5);
            inv[i] = inv_pow_075(d[i]);
        }
    } else {
        window_sum(pad, keep, s, width, size);
        inv_pow_row(s, d, inv, width, k, alpha, beta);
    }
    /* t[i] = g[i] x[i] d[i]^(-beta-1); channel j gathers t[i] for i in [j - hi, j + lo]:
     * the mirrored window, whose padding offset is hi. */
    for (int i = 0; i < width; ++i)
        pad[hi + i] = load(grad, go + i, bf16) * load_act(x, xo + i, bf16, relu) * inv[i] / d[i];
    if (size == 5) {
        for (int i = 0; i < width; ++i) {
            const float xi = load(x, xo + i, bf16), gi = load(grad, go + i, bf16);
            const float si = window_at(pad, keep_t, width, i, 5);
            store(gx, gxo + i, relu_grad(xi, gi * inv[i] - scale * xi * si, relu), bf16);
        }
        return;
    }
    window_sum(pad, keep_t, s, width, size);
    for (int i = 0; i < width; ++i) {
        const float xi = load(x, xo + i, bf16), gi = load(grad, go + i, bf16);
        store(gx, gxo + i, relu_grad(xi, gi * inv[i] - scale * xi * s[i], relu), bf16);
    }
}

/* Rows [first, first + rows) of `width` values each (whole pixels' rows back to back). */
static ALWAYS_INLINE int forward_rows(const void *x, void *y, long first, long rows, int width,
                                      int cg, int size, float alpha, float beta, float k,
                                      int bf16, int relu) {
    uint32_t *keep = window_masks(width, cg, size, size / 2);
    if (!keep) return 2;
    /* The window borders of pad are read but masked to zero, bits and all; cleared once so
     * that nothing uninitialised is read. */
    scratch_t w;
    memset(w.pad, 0, sizeof w.pad);
    for (long p = first; p < first + rows; ++p)
        forward_row(x, p * width, y, p * width, width, keep, &w, size, alpha, beta, k, bf16,
                    relu);
    free(keep);
    return 0;
}

static ALWAYS_INLINE int backward_rows(const void *x, const void *grad, void *gx, long first,
                                       long rows, int width, int cg, int size, float alpha,
                                       float beta, float k, int bf16, int relu) {
    uint32_t *keep = window_masks(width, cg, size, size / 2);
    uint32_t *keep_t = window_masks(width, cg, size, (size - 1) / 2);
    if (!keep || !keep_t) {
        free(keep);
        free(keep_t);
        return 2;
    }
    scratch_t w;
    memset(w.pad, 0, sizeof w.pad);
    for (long p = first; p < first + rows; ++p) {
        const long o = p * width;
        backward_row(x, o, grad, o, gx, o, width, keep, keep_t, &w, size, alpha, beta, k, bf16,
                     relu);
    }
    free(keep);
    free(keep_t);
    return 0;
}

static ALWAYS_INLINE int lrn_forward(const void *x, void *y, long rows, int channels,
                                     int groups, int size, float alpha, float beta, float k,
                                     int bf16, int relu) {
    if (bad_shape(channels, groups, size)) return 1;
    const int r = block_rows(channels), cg = channels / groups;
    const long blocks = rows / r;
    int err = 0;
    if (blocks)
        err = forward_rows(x, y, 0, blocks, r * channels, cg, size, alpha, beta, k, bf16, relu);
    if (!err && rows > blocks * r) /* the last rows, one pixel at a time */
        err = forward_rows(x, y, blocks * r, rows - blocks * r, channels, cg, size, alpha, beta,
                           k, bf16, relu);
    return err;
}

static ALWAYS_INLINE int lrn_backward(const void *x, const void *grad, void *gx, long rows,
                                      int channels, int groups, int size, float alpha,
                                      float beta, float k, int bf16, int relu) {
    if (bad_shape(channels, groups, size)) return 1;
    const int r = block_rows(channels), cg = channels / groups;
    const long blocks = rows / r;
    int err = 0;
    if (blocks)
        err = backward_rows(x, grad, gx, 0, blocks, r * channels, cg, size, alpha, beta, k,
                            bf16, relu);
    if (!err && rows > blocks * r)
        err = backward_rows(x, grad, gx, blocks * r, rows - blocks * r, channels, cg, size,
                            alpha, beta, k, bf16, relu);
    return err;
}

/* ---- LRN followed by max pooling (Figure 2: conv1 and conv2's stages) ------------------
 *
 * z = maxpool(LRN(act(x))) for an (N, H, W, C) x, kernel pk, stride ps, no padding, output
 * (N, Ho, Wo, C); Ho and Wo come from the caller (floor or ceil mode: a last window may be
 * cut by the edge). The LRN of each input row of W pixels goes to a small ring of rows in
 * the storage type, exactly what the separate LRN would have written to memory, and the
 * pooling reads it from there: the full-size LRN output, PyTorch's int64 indices and the
 * zero-filled gradient of the backward are never made. arg[n, oh, ow, c] keeps the argmax
 * as its offset in the window, (ih - oh ps) pk + (iw - ow ps), in one byte (pk <= 15).
 *
 * Same bits as torch's max_pool2d on the LRN's output: the window scanned row by row, a
 * value taking the max when greater or NaN, the first of equal values kept; and in the
 * backward each input's gradient summed in the storage type over the windows (oh, then
 * ow, ascending) whose argmax it is, as max_pool2d_backward adds them. (A NaN stays NaN; its
 * bit pattern may differ from PyTorch's, whose bf16 kernels rewrite NaNs, and where two
 * NaNs are added which payload survives is the compiler's choice, as in C generally.) */

#define MAX_POOL_KERNEL 15

/* The LRN of image row (n, ih) into dst (W * channels values, storage type), in pieces of
 * `piece` pixels; keep_a: masks for a whole piece, keep_b: for the last, shorter one. */
static ALWAYS_INLINE void lrn_image_row(const void *x, void *dst, long n, int ih, int H, int W,
                                        int channels, int piece, const uint32_t *keep_a,
                                        const uint32_t *keep_b, scratch_t *w, int size,
                                        float alpha, float beta, float k, int bf16, int relu) {
    const long row = ((n * H + ih) * (long)W) * channels;
    for (int p0 = 0; p0 < W; p0 += piece) {
        const int pixels = W - p0 < piece ? W - p0 : piece;
        const long o = (long)p0 * channels;
        forward_row(x, row + o, dst, o, pixels * channels, pixels == piece ? keep_a : keep_b, w,
                    size, alpha, beta, k, bf16, relu);
    }
}

static ALWAYS_INLINE void lrn_image_row_backward(const void *x, const void *grad, void *gx,
                                                 long n, int ih, int H, int W, int channels,
                                                 int piece, const uint32_t *const masks[4],
                                                 scratch_t *w, int size, float alpha,
                                                 float beta, float k, int bf16, int relu) {
    const long row = ((n * H + ih) * (long)W) * channels;
    for (int p0 = 0; p0 < W; p0 += piece) {
        const int pixels = W - p0 < piece ? W - p0 : piece, b = pixels == piece ? 0 : 2;
        const long o = (long)p0 * channels;
        backward_row(x, row + o, grad, o, gx, row + o, pixels * channels, masks[b],
                     masks[b + 1], w, size, alpha, beta, k, bf16, relu);
    }
}

static inline int bad_pool(long first, long count, int H, int W, int pk, int ps, int Ho,
                           int Wo) {
    return first < 0 || count < 0 || H < 1 || W < 1 || pk < 1 || pk > MAX_POOL_KERNEL || ps < 1 || Ho < 1 || Wo < 1 ||
           (long)(Ho - 1) * ps >= H || (long)(Wo - 1) * ps >= W;
}

/* Masks for pieces of `piece` pixels and of the last `W % piece` (NULL when none); the
 * mirrored ones too when `mirrored`. Returns 0, or 2 when out of memory. */
static int piece_masks(uint32_t *m[4], int W, int channels, int cg, int size, int piece,
                       int mirrored) {
    const int last = W % piece;
    m[0] = window_masks(piece * channels, cg, size, size / 2);
    m[1] = mirrored ? window_masks(piece * channels, cg, size, (size - 1) / 2) : NULL;
    m[2] = last ? window_masks(last * channels, cg, size, size / 2) : NULL;
    m[3] = last && mirrored ? window_masks(last * channels, cg, size, (size - 1) / 2) : NULL;
    if (!m[0] || (mirrored && !m[1]) || (last && (!m[2] || (mirrored && !m[3])))) return 2;
    return 0;
}

/* Output rows u = n Ho + oh for u in [first, first + count). */
static ALWAYS_INLINE int lrn_pool_forward(const void *x, void *z, uint8_t *arg, long first,
                                          long count, int H, int W, int channels, int groups,
                                          int size, float alpha, float beta, float k, int pk,
                                          int ps, int Ho, int Wo, int bf16, int relu) {
    if (bad_shape(channels, groups, size) || bad_pool(first, count, H, W, pk, ps, Ho, Wo)) return 1;
    const int C = channels, piece = W < MAX_CHANNELS / C ? W : MAX_CHANNELS / C;
    const size_t esize = bf16 ? 2 : 4, row_values = (size_t)W * C;
    uint32_t *masks[4] = {NULL, NULL, NULL, NULL};
    /* ring[ih % pk]: the LRN of input row ih of image tag[ih % pk] / H. */
    char *ring = malloc(esize * row_values * (size_t)pk);
    float *best = malloc(sizeof(float) * (size_t)Wo * C), *at = malloc(sizeof(float) * (size_t)Wo * C);
    scratch_t *w = malloc(sizeof *w);
    int err = piece_masks(masks, W, C, C / groups, size, piece, 0);
    if (!ring || !best || !at || !w) err = 2;
    if (!err) {
        long tag[MAX_POOL_KERNEL];
        for (int i = 0; i < pk; ++i) tag[i] = -1;
        memset(w->pad, 0, sizeof w->pad);
        for (long u = first; u < first + count; ++u) {
            const long n = u / Ho;
            const int oh = (int)(u % Ho), h0 = oh * ps, h1 = h0 + pk < H ? h0 + pk : H;
            for (long i = 0; i < (long)Wo * C; ++i) {
                best[i] = -INFINITY;
                at[i] = 0.0f;
            }
            for (int ih = h0; ih < h1; ++ih) {
                char *row = ring + esize * row_values * (size_t)(ih % pk);
                if (tag[ih % pk] != n * H + ih) {
                    lrn_image_row(x, row, n, ih, H, W, C, piece, masks[0], masks[2], w, size,
                                  alpha, beta, k, bf16, relu);
                    tag[ih % pk] = n * H + ih;
                }
                for (int ow = 0; ow < Wo; ++ow) {
                    const int w0 = ow * ps, w1 = w0 + pk < W ? w0 + pk : W;
                    float *b = best + (long)ow * C, *a = at + (long)ow * C;
                    for (int iw = w0; iw < w1; ++iw) {
                        const float t = (float)((ih - h0) * pk + (iw - w0));
                        const long o = (long)iw * C;
                        for (int c = 0; c < C; ++c) {
                            const float v = load(row, o + c, bf16);
                            const int take = v > b[c] || v != v; /* greater, or NaN */
                            b[c] = take ? v : b[c];
                            a[c] = take ? t : a[c];
                        }
                    }
                }
            }
            /* best holds values read from storage: storing them again is exact. */
            const long zo = u * (long)Wo * C;
            for (long i = 0; i < (long)Wo * C; ++i) {
                store(z, zo + i, best[i], bf16);
                arg[zo + i] = (uint8_t)at[i];
            }
        }
    }
    for (int i = 0; i < 4; ++i) free(masks[i]);
    free(ring);
    free(best);
    free(at);
    free(w);
    return err;
}

/* Input rows u = n H + ih for u in [first, first + count): gx from x, gz and arg. */
static ALWAYS_INLINE int lrn_pool_backward(const void *x, const void *gz, const uint8_t *arg,
                                           void *gx, long first, long count, int H, int W,
                                           int channels, int groups, int size, float alpha,
                                           float beta, float k, int pk, int ps, int Ho, int Wo,
                                           int bf16, int relu) {
    if (bad_shape(channels, groups, size) || bad_pool(first, count, H, W, pk, ps, Ho, Wo)) return 1;
    const int C = channels, piece = W < MAX_CHANNELS / C ? W : MAX_CHANNELS / C;
    const size_t esize = bf16 ? 2 : 4;
    uint32_t *masks[4] = {NULL, NULL, NULL, NULL};
    void *gy = malloc(esize * (size_t)W * C); /* the LRN output's gradient, one input row */
    scratch_t *w = malloc(sizeof *w);
    int err = piece_masks(masks, W, C, C / groups, size, piece, 1);
    if (!gy || !w) err = 2;
    if (!err) {
        memset(w->pad, 0, sizeof w->pad);
        for (long u = first; u < first + count; ++u) {
            const long n = u / H;
            const int ih = (int)(u % H);
            memset(gy, 0, esize * (size_t)W * C);
            /* The windows holding row ih: oh ps <= ih < oh ps + pk, oh < Ho. */
            const int oh_lo = ih >= pk ? (ih - pk) / ps + 1 : 0;
            const int oh_hi = ih / ps < Ho - 1 ? ih / ps : Ho - 1;
            for (int oh = oh_lo; oh <= oh_hi; ++oh) {
                const int r = ih - oh * ps;
                for (int ow = 0; ow < Wo; ++ow) {
                    const int w0 = ow * ps, w1 = w0 + pk < W ? w0 + pk : W;
                    const long zo = ((n * Ho + oh) * (long)Wo + ow) * C;
                    for (int iw = w0; iw < w1; ++iw) {
                        const uint8_t t = (uint8_t)(r * pk + (iw - w0));
                        const long o = (long)iw * C;
                        for (int c = 0; c < C; ++c) {
                            const float cur = load(gy, o + c, bf16);
                            const float sum = cur + load(gz, zo + c, bf16);
                            store(gy, o + c, arg[zo + c] == t ? sum : cur, bf16);
                        }
                    }
                }
            }
            lrn_image_row_backward(x, gy, gx, n, ih, H, W, C, piece,
                                   (const uint32_t *const *)masks, w, size, alpha, beta, k,
                                   bf16, relu);
        }
    }
    for (int i = 0; i < 4; ++i) free(masks[i]);
    free(gy);
    free(w);
    return err;
}

/* Entry points: one specialised copy per storage type and ReLU flag (the flags are
 * constants in each call below, so the compiler folds them out of the loops). */
int alexnet_lrn_forward(const float *x, float *y, long rows, int channels, int groups,
                        int size, float alpha, float beta, float k, int relu) {
    return relu ? lrn_forward(x, y, rows, channels, groups, size, alpha, beta, k, 0, 1)
                : lrn_forward(x, y, rows, channels, groups, size, alpha, beta, k, 0, 0);
}

int alexnet_lrn_backward(const float *x, const float *grad, float *gx, long rows,
                         int channels, int groups, int size, float alpha, float beta, float k,
                         int relu) {
    return relu ? lrn_backward(x, grad, gx, rows, channels, groups, size, alpha, beta, k, 0, 1)
                : lrn_backward(x, grad, gx, rows, channels, groups, size, alpha, beta, k, 0, 0);
}

int alexnet_lrn_forward_bf16(const uint16_t *x, uint16_t *y, long rows, int channels,
                             int groups, int size, float alpha, float beta, float k, int relu) {
    return relu ? lrn_forward(x, y, rows, channels, groups, size, alpha, beta, k, 1, 1)
                : lrn_forward(x, y, rows, channels, groups, size, alpha, beta, k, 1, 0);
}

int alexnet_lrn_backward_bf16(const uint16_t *x, const uint16_t *grad, uint16_t *gx, long rows,
                              int channels, int groups, int size, float alpha, float beta,
                              float k, int relu) {
    return relu ? lrn_backward(x, grad, gx, rows, channels, groups, size, alpha, beta, k, 1, 1)
                : lrn_backward(x, grad, gx, rows, channels, groups, size, alpha, beta, k, 1, 0);
}

#define POOL_ENTRY(name, T, bf16)                                                               \
    int name##_forward(const T *x, T *z, uint8_t *arg, long first, long count, int H, int W,    \
                       int channels, int groups, int size, float alpha, float beta, float k,    \
                       int relu, int pk, int ps, int Ho, int Wo) {                              \
        return relu ? lrn_pool_forward(x, z, arg, first, count, H, W, channels, groups, size, \
                                       alpha, beta, k, pk, ps, Ho, Wo, bf16, 1)                 \
                    : lrn_pool_forward(x, z, arg, first, count, H, W, channels, groups, size, \
                                       alpha, beta, k, pk, ps, Ho, Wo, bf16, 0);                \
    }                                                                                           \
    int name##_backward(const T *x, const T *gz, const uint8_t *arg, T *gx, long first,         \
                        long count, int H, int W, int channels, int groups, int size,           \
                        float alpha, float beta, float k, int relu, int pk, int ps, int Ho,     \
                        int Wo) {                                                               \
        return relu ? lrn_pool_backward(x, gz, arg, gx, first, count, H, W, channels, groups,  \
                                        size, alpha, beta, k, pk, ps, Ho, Wo, bf16, 1)          \
                    : lrn_pool_backward(x, gz, arg, gx, first, count, H, W, channels, groups,  \
                                        size, alpha, beta, k, pk, ps, Ho, Wo, bf16, 0);         \
    }

/* alexnet_lrn_pool_forward, alexnet_lrn_pool_backward and their _bf16 twins. */
POOL_ENTRY(alexnet_lrn_pool, float, 0)
POOL_ENTRY(alexnet_lrn_pool_bf16, uint16_t, 1)
