/* The torch backend's loops for NCHW float32 tensors with many channels (the image of the
   forward, the result of the image gradient), included at the end of _native.c (one translation
   unit: these use its row loop, blocked transpose and streamed copy). Same rules: TF's arithmetic,
   expression for expression, under TF's floating-point modes.

   Work is split by blocks of `block` channels. A thread takes a block, gathers those channels of
   every image channels-innermost into a buffer of B * H * W * block values that stays in its
   cache (L2 for block = 32 and two 50 x 68 feature maps), and runs every box over it: the taps of
   the samples are read from that buffer instead of from an image transposed whole through memory,
   and each box's result for the block, block * crop_height * crop_width floats, is one contiguous
   piece of an NCHW result (64-byte aligned when the result is: 32 * 49 * 4 bytes is 98 cache
   lines). The image gradient sums into such a buffer, then transposes it into the result's
   planes once. */

/* blk (B, H * W, w) = channels [c0, c0 + w) of the NCHW float32 image (strides is_*, elements). */
static void planes_gather_f32(const float* image, i64 is_b, i64 is_d, i64 is_y, i64 is_x, i64 B,
                              i64 H, i64 W, i64 c0, i64 w, float* blk) {
    const i64 HW = H * W;
    for (i64 b = 0; b < B; ++b) {
        const float* src = image + b * is_b + c0 * is_d;
        float* dst = blk + b * HW * w;
        if (is_x == 1 && is_y == W && is_d == HW) {
            transpose_f32(src, w, HW, dst);
            continue;
        }
        for (i64 y = 0; y < H; ++y)
            for (i64 x = 0; x < W; ++x)
                for (i64 c = 0; c < w; ++c)
                    dst[(y * W + x) * w + c] = src[c * is_d + y * is_y + x * is_x];
    }
}

/* Forward, NCHW float32 image (B, D, H, W; strides is_*) to NCHW crops (strides os_* in
   elements, NCHW order), channel blocks [u0, u1) of `block` channels. Tables (N, ch) / (N, cw)
   as for crop_*. work: B * H * W * block + 2 * block * ch * cw floats. `streamed`: large results
   whose boxes are contiguous NCHW blocks are written with non-temporal stores. Returns -1, or the
   first box whose image index is outside [0, B) (nothing of it is read). */
i64 crop_planes_f32(const float* image, i64 is_b, i64 is_d, i64 is_y, i64 is_x, i64 B, i64 H,
                    i64 W, const int32_t* box_ind, i64 N, i64 ch, i64 cw,
                    const i64* ylo, const i64* yhi, const float* ylerp, const uint8_t* yok,
                    const i64* xlo, const i64* xhi, const float* xlerp, const uint8_t* xok,
                    int nearest, float ev, float* out, i64 os_n, i64 os_d, i64 os_y, i64 os_x,
                    i64 D, i64 block, int streamed, float* work, i64 u0, i64 u1) {
    FP_ENTER;
    const i64 P = ch * cw, HW = H * W;
    const int contiguous = os_x == 1 && os_y == cw && os_d == P;
    float* blk = work;
    float* box = work + B * HW * block; /* (P, w): a box's crop, channels innermost */
    float* planes = box + P * block;     /* (w, P): the same, channel planes */
    for (i64 u = u0; u < u1; ++u) {
        const i64 c0 = u * block, w = D - c0 < block ? D - c0 : block;
        planes_gather_f32(image, is_b, is_d, is_y, is_x, B, H, W, c0, w, blk);
        for (i64 n = 0; n < N; ++n) {
            const i64 b = box_ind[n];
            if (b < 0 || b >= B) FP_RETURN(n);
            for (i64 y = 0; y < ch; ++y)
                crop_row_f32(blk + b * HW * w, W * w, w, 1, n, y, ch, cw, w, ylo, yhi, ylerp,
                             yok, xlo, xhi, xlerp, xok, nearest, ev, box + y * cw * w, w, 1);
            float* dst = out + n * os_n + c0 * os_d;
            if (contiguous) {
                transpose_f32(box, P, w, planes);
                if (streamed)
                    stream_row(dst, planes, P * w);
                else
                    memcpy(dst, planes, (size_t)(P * w) * sizeof(float));
            } else {
                for (i64 c = 0; c < w; ++c)
                    for (i64 y = 0; y < ch; ++y)
                        for (i64 x = 0; x < cw; ++x)
                            dst[c * os_d + y * os_y + x * os_x] = box[(y * cw + x) * w + c];
            }
        }
    }
    if (streamed) stream_fence();
    FP_RETURN(-1);
}

/* Image gradient into a contiguous NCHW result out (B, D, H, W) in T (float or double) from
   float32 grads (N, D, ch, cw; strides gs_* in elements, NCHW order), channel blocks [u0, u1) of
   `block` channels: the block's channels are summed in work (B, H * W, block) of T, zeroed first,
   every box in order, rows, columns, corners TL, TR, BL, BR within a box (TF's order for every
   pixel of every channel, whatever the split), then transposed into the result's planes. work:
   B * H * W * block values of T, then block * ch * cw floats. Returns -1, or the first box whose
   image index is outside [0, B). */
#define DEFINE_GRAD_IMAGE_PLANES(SUF, T)                                                       \
i64 grad_image_planes_##SUF(const float* grads, i64 gs_n, i64 gs_d, i64 gs_y, i64 gs_x,        \
                            const int32_t* box_ind, i64 N, i64 ch, i64 cw,                    \
                            const i64* ylo, const i64* yhi, const float* ylerp,               \
                            const uint8_t* yok, const i64* xlo, const i64* xhi,               \
                            const float* xlerp, const uint8_t* xok, int nearest,              \
                            T* out, i64 B, i64 H, i64 W, i64 D, i64 block, T* work, i64 u0,   \
                            i64 u1) {                                                         \
    FP_ENTER;                                                                                \
    const i64 P = ch * cw, HW = H * W;                                                        \
    T* acc = work;                                                                            \
    float* gt = (float*)(work + B * HW * block); /* (P, w): a box's gradient, channels last */ \
    for (i64 u = u0; u < u1; ++u) {                                                           \
        const i64 c0 = u * block, w = D - c0 < block ? D - c0 : block;                        \
        memset(acc, 0, (size_t)(B * HW * w) * sizeof(T));                                     \
        for (i64 n = 0; n < N; ++n) {                                                         \
            const i64 b = box_ind[n];                                                         \
            if (b < 0 || b >= B) FP_RETURN(n);                                                \
            const float* gb = grads + n * gs_n + c0 * gs_d;                                   \
            if (gs_x == 1 && gs_y == cw && gs_d == P) {                                       \
                transpose_f32(gb, w, P, gt);                                                  \
            } else {                                                                          \
                for (i64 c = 0; c < w; ++c)                                                   \
                    for (i64 y = 0; y < ch; ++y)                                              \
                        for (i64 x = 0; x < cw; ++x)                                          \
                            gt[(y * cw + x) * w + c] = gb[c * gs_d + y * gs_y + x * gs_x];    \
            }                                                                                 \
            T* img = acc + b * HW * w;                                                        \
            /* the next box's block, a slice per row: its reads overlap this box's sums */    \
            const float* next = n + 1 < N ? gb + gs_n : NULL;                                 \
            for (i64 y = 0; y < ch; ++y) {                                                    \
                if (next != NULL && gs_d == P)                                                \
                    for (i64 i = w * P * y / ch & ~15; i < w * P * (y + 1) / ch; i += 16)     \
                        __builtin_prefetch(next + i);                                         \
                const i64 ry = n * ch + y;                                                    \
                if (!yok[ry]) continue;                                                       \
                T* top = img + ylo[ry] * W * w;                                               \
                T* bottom = img + yhi[ry] * W * w;                                            \
                const float y_lerp = ylerp[ry];                                               \
                for (i64 x = 0; x < cw; ++x) {                                                \
                    const i64 rx = n * cw + x;                                                \
                    if (!xok[rx]) continue;                                                   \
                    const float* g = gt + (y * cw + x) * w;                                   \
                    T* restrict tl = top + xlo[rx] * w;                                       \
                    if (nearest) {                                                            \
                        for (i64 c = 0; c < w; ++c) tl[c] += (T)(g[c]);                       \
                        continue;                                                             \
                    }                                                                         \
                    T* tr = top + xhi[rx] * w;                                                \
                    T* bl = bottom + xlo[rx] * w;                                             \
                    T* br = bottom + xhi[rx] * w;                                             \
                    const float x_lerp = xlerp[rx];                                           \
                    for (i64 c = 0; c < w; ++c) {                                             \
                        const cropcore_corners add = cropcore_spread(g[c], x_lerp, y_lerp);   \
                        tl[c] += (T)add.top_left;                                             \
                        tr[c] += (T)add.top_right;                                            \
                        bl[c] += (T)add.bottom_left;                                          \
                        br[c] += (T)add.bottom_right;                                         \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        for (i64 b = 0; b < B; ++b) /* (HW, w) -> the result's planes c0 .. c0 + w */        \
            PLANES_OUT_##SUF(acc + b * HW * w, HW, w, out + (b * D + c0) * HW);               \
    }                                                                                         \
    FP_RETURN(-1);                                                                            \
}

static void planes_out_f64(const double* s, i64 rows, i64 cols, double* t) {
    for (i64 c = 0; c < cols; ++c)
        for (i64 r = 0; r < rows; ++r) t[c * rows + r] = s[r * cols + c];
}
#define PLANES_OUT_f32 transpose_f32
#define PLANES_OUT_f64 planes_out_f64

DEFINE_GRAD_IMAGE_PLANES(f32, float)
DEFINE_GRAD_IMAGE_PLANES(f64, double)
