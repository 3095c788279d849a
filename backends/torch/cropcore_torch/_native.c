/* The torch backend's compiled CPU loops: TF's loop nests over the per-box sample tables.
   _native.py compiles this file (with -I cropcore.native.include_dir()) and calls it via ctypes;
   see its docstring for the requirements. The per-sample arithmetic is the shared
   tf_crop_and_resize.h, which the CUDA kernels compile too. Functions are generated per image
   dtype (suffix u8 ... f64). */
#include <stdint.h>
#include <string.h>

#include "tf_crop_and_resize.h"

typedef int64_t i64;

/* Non-temporal copy of a computed row into the result: a large result is written without first
   being read into the cache, which halves the memory traffic of the forward pass. */
#if defined(__AVX512F__) || defined(__AVX__) || defined(__SSE2__)
#include <immintrin.h>
#endif
static void stream_row(float* dst, const float* src, i64 n) {
    i64 i = 0;
#if defined(__AVX512F__)
    for (; i < n && ((uintptr_t)(dst + i) & 63); ++i) dst[i] = src[i];
    for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
#elif defined(__AVX__)
    for (; i < n && ((uintptr_t)(dst + i) & 31); ++i) dst[i] = src[i];
    for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
#elif defined(__SSE2__)
    for (; i < n && ((uintptr_t)(dst + i) & 15); ++i) dst[i] = src[i];
    for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
#endif
    for (; i < n; ++i) dst[i] = src[i];
}

static void stream_fence(void) {
#if defined(__SSE2__)
    _mm_sfence(); /* streamed stores are weakly ordered: finish them before returning */
#endif
}

/* t (P, D) = the transpose of s (D, P), both contiguous, by 8 x 8 blocks transposed in AVX
   registers (eight loads, eight stores of 32 bytes: about 8 times fewer memory operations than
   the scalar loop, which the NCHW paths spend most of their extra time in); rows of blocks taken
   16 rows of s at a time, so that reads stay within 16 cache lines and writes run along rows of
   t. A pure copy: the bits are the same whichever loop runs. */
#if defined(__AVX__)
static inline void transpose8_f32(const float* s, i64 ss, float* t, i64 ts) {
    const __m256 r0 = _mm256_loadu_ps(s + 0 * ss), r1 = _mm256_loadu_ps(s + 1 * ss);
    const __m256 r2 = _mm256_loadu_ps(s + 2 * ss), r3 = _mm256_loadu_ps(s + 3 * ss);
    const __m256 r4 = _mm256_loadu_ps(s + 4 * ss), r5 = _mm256_loadu_ps(s + 5 * ss);
    const __m256 r6 = _mm256_loadu_ps(s + 6 * ss), r7 = _mm256_loadu_ps(s + 7 * ss);
    const __m256 u0 = _mm256_unpacklo_ps(r0, r1), u1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 u2 = _mm256_unpacklo_ps(r2, r3), u3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 u4 = _mm256_unpacklo_ps(r4, r5), u5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 u6 = _mm256_unpacklo_ps(r6, r7), u7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 v0 = _mm256_shuffle_ps(u0, u2, 0x44), v1 = _mm256_shuffle_ps(u0, u2, 0xEE);
    const __m256 v2 = _mm256_shuffle_ps(u1, u3, 0x44), v3 = _mm256_shuffle_ps(u1, u3, 0xEE);
    const __m256 v4 = _mm256_shuffle_ps(u4, u6, 0x44), v5 = _mm256_shuffle_ps(u4, u6, 0xEE);
    const __m256 v6 = _mm256_shuffle_ps(u5, u7, 0x44), v7 = _mm256_shuffle_ps(u5, u7, 0xEE);
    _mm256_storeu_ps(t + 0 * ts, _mm256_permute2f128_ps(v0, v4, 0x20));
    _mm256_storeu_ps(t + 1 * ts, _mm256_permute2f128_ps(v1, v5, 0x20));
    _mm256_storeu_ps(t + 2 * ts, _mm256_permute2f128_ps(v2, v6, 0x20));
    _mm256_storeu_ps(t + 3 * ts, _mm256_permute2f128_ps(v3, v7, 0x20));
    _mm256_storeu_ps(t + 4 * ts, _mm256_permute2f128_ps(v0, v4, 0x31));
    _mm256_storeu_ps(t + 5 * ts, _mm256_permute2f128_ps(v1, v5, 0x31));
    _mm256_storeu_ps(t + 6 * ts, _mm256_permute2f128_ps(v2, v6, 0x31));
    _mm256_storeu_ps(t + 7 * ts, _mm256_permute2f128_ps(v3, v7, 0x31));
}
#endif

/* Ask for the n floats at p to be brought into cache (the next box's gradient, read while this
   one is summed: a burst of strided reads in the transpose would otherwise wait on memory). */
static inline void prefetch_block(const float* p, i64 n) {
    for (i64 i = 0; i < n; i += 16) __builtin_prefetch(p + i);
}

static void transpose_f32(const float* s, i64 D, i64 P, float* t) {
    i64 d_done = 0; /* rows of s already transposed by 8 x 8 blocks */
#if defined(__AVX__)
    if (D >= 8 && P >= 8 && (D & 7 || P & 7) && D * P <= 16384) {
        /* Small, ragged (a 7 x 7 crop's 49 pixels): a last block overlaps (same values) */
        const i64 dl = D - 8, pl = P - 8;
        for (i64 i = 0;; i = i + 8 < pl ? i + 8 : pl) {
            for (i64 d = 0;; d = d + 8 < dl ? d + 8 : dl) {
                transpose8_f32(s + d * P + i, P, t + i * D + d, D);
                if (d == dl) break;
            }
            if (i == pl) break;
        }
        return;
    }
    /* Tiles of 64 x 64 (16 KB read, 16 KB written: both stay in L1), 8 x 8 blocks inside. */
    d_done = D & ~(i64)7;
    const i64 p_done = P & ~(i64)7;
    for (i64 i0 = 0; i0 < p_done; i0 += 64) {
        const i64 i1 = i0 + 64 < p_done ? i0 + 64 : p_done;
        for (i64 d0 = 0; d0 < d_done; d0 += 64) {
            const i64 d1 = d0 + 64 < d_done ? d0 + 64 : d_done;
            for (i64 i = i0; i < i1; i += 8)
                for (i64 d = d0; d < d1; d += 8)
                    transpose8_f32(s + d * P + i, P, t + i * D + d, D);
        }
    }
    for (i64 i = p_done; i < P; ++i) { /* the last P % 8 columns of s */
        float* row = t + i * D;
        for (i64 d = 0; d < d_done; ++d) row[d] = s[d * P + i];
    }
#endif
    for (i64 d0 = d_done; d0 < D; d0 += 16) {
        const i64 d1 = d0 + 16 < D ? d0 + 16 : D;
        for (i64 i = 0; i < P; ++i) {
            float* row = t + i * D;
            for (i64 d = d0; d < d1; ++d) row[d] = s[d * P + i];
        }
    }
}

/* Every exported function runs under TF's floating-point modes (flush-to-zero, denormals-are-zero:
   cropcore_fp_enter) and restores the caller's on return. */
#define FP_ENTER const cropcore_fpenv fp_saved_ = cropcore_fp_enter()
#define FP_RETURN(value) do { cropcore_fp_leave(fp_saved_); return (value); } while (0)

#define LOAD_CAST(p) ((float)(*(p)))
#define LOAD_HALF(p) cropcore_half_to_float(*(p))

/* Forward, one row of one box: crops[n, y, :, :] into `o` (element (x, d) at o[x*os_x + d*os_d]).
   Image strides is_* (elements, NHWC order); tables (N, ch) / (N, cw), C-contiguous.
   The arithmetic is TF's, expression for expression. */
#define DEFINE_CROP_ROW(SUF, T, LOAD)                                                          \
static inline void crop_row_##SUF(                                                            \
        const T* img, i64 is_y, i64 is_x, i64 is_d, i64 n, i64 y, i64 ch, i64 cw, i64 D,      \
        const i64* ylo, const i64* yhi, const float* ylerp, const uint8_t* yok,               \
        const i64* xlo, const i64* xhi, const float* xlerp, const uint8_t* xok,               \
        int nearest, float ev, float* o, i64 os_x, i64 os_d) {                                \
    const i64 r = n * ch + y;                                                                 \
    if (!yok[r]) {                                                                            \
        for (i64 x = 0; x < cw; ++x)                                                          \
            for (i64 d = 0; d < D; ++d) o[x * os_x + d * os_d] = ev;                          \
        return;                                                                               \
    }                                                                                         \
    const T* top = img + ylo[r] * is_y;                                                       \
    const T* bottom = img + yhi[r] * is_y;                                                    \
    const float y_lerp = ylerp[r];                                                            \
    const i64* left = xlo + n * cw;                                                           \
    const i64* right = xhi + n * cw;                                                          \
    const float* x_lerps = xlerp + n * cw;                                                    \
    const uint8_t* x_ok = xok + n * cw;                                                       \
    if (is_d == 1 && os_d == 1) { /* channels innermost on both sides: vectorisable */        \
        for (i64 x = 0; x < cw; ++x) {                                                        \
            float* restrict ox = o + x * os_x;                                                \
            if (!x_ok[x]) {                                                                   \
                for (i64 d = 0; d < D; ++d) ox[d] = ev;                                       \
            } else if (nearest) {                                                             \
                const T* restrict p = top + left[x] * is_x;                                   \
                for (i64 d = 0; d < D; ++d) ox[d] = LOAD(p + d);                              \
            } else {                                                                          \
                const T* restrict tl = top + left[x] * is_x;                                  \
                const T* restrict tr = top + right[x] * is_x;                                 \
                const T* restrict bl = bottom + left[x] * is_x;                               \
                const T* restrict br = bottom + right[x] * is_x;                              \
                const float x_lerp = x_lerps[x];                                              \
                for (i64 d = 0; d < D; ++d)                                                   \
                    ox[d] = cropcore_bilinear(LOAD(tl + d), LOAD(tr + d), LOAD(bl + d),       \
                                              LOAD(br + d), x_lerp, y_lerp);                  \
            }                                                                                 \
        }                                                                                     \
        return;                                                                               \
    }                                                                                         \
    for (i64 d = 0; d < D; ++d) { /* any other layout: channel by channel, along the row */   \
        const T* tp = top + d * is_d;                                                         \
        const T* bp = bottom + d * is_d;                                                      \
        float* od = o + d * os_d;                                                             \
        for (i64 x = 0; x < cw; ++x) {                                                        \
            if (!x_ok[x]) {                                                                   \
                od[x * os_x] = ev;                                                            \
            } else if (nearest) {                                                             \
                od[x * os_x] = LOAD(tp + left[x] * is_x);                                     \
            } else {                                                                          \
                od[x * os_x] = cropcore_bilinear(                                             \
                    LOAD(tp + left[x] * is_x), LOAD(tp + right[x] * is_x),                    \
                    LOAD(bp + left[x] * is_x), LOAD(bp + right[x] * is_x), x_lerps[x], y_lerp);\
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
}

/* Forward by rows: units [r0, r1) of r = n * ch + y; output strides os_* (NHWC order).
   scratch: NULL, or cw * D floats: a row that is contiguous in the result is then computed
   there and streamed out. Returns -1, or the index of a box whose image index is outside
   [0, B) (nothing of that box is read).
   Forward by boxes (crop_boxes_*), for a result whose channels are planes (NCHW): units
   [r0, r1) of boxes; scratch holds 2 * D * ch * cw floats. Each box is computed channels
   innermost (reading an NCHW image plane by plane would touch one cache line per sample), then
   written out one channel plane at a time. */
#define DEFINE_CROP(SUF, T, LOAD)                                                              \
DEFINE_CROP_ROW(SUF, T, LOAD)                                                                 \
i64 crop_##SUF(const T* image, i64 is_b, i64 is_y, i64 is_x, i64 is_d, i64 B,                 \
               const int32_t* box_ind, i64 ch, i64 cw, i64 D,                                 \
               const i64* ylo, const i64* yhi, const float* ylerp, const uint8_t* yok,        \
               const i64* xlo, const i64* xhi, const float* xlerp, const uint8_t* xok,        \
               int nearest, float ev, float* out, i64 os_n, i64 os_y, i64 os_x, i64 os_d,     \
               float* scratch, i64 r0, i64 r1) {                                              \
    FP_ENTER;                                                                                \
    const int stream = scratch != NULL && os_d == 1 && os_x == D;                             \
    for (i64 r = r0; r < r1; ++r) {                                                           \
        const i64 n = r / ch, y = r % ch, b = box_ind[n];                                     \
        if (b < 0 || b >= B) FP_RETURN(n);                                                        \
        float* row = out + n * os_n + y * os_y;                                               \
        crop_row_##SUF(image + b * is_b, is_y, is_x, is_d, n, y, ch, cw, D,                  \
                       ylo, yhi, ylerp, yok, xlo, xhi, xlerp, xok, nearest, ev,               \
                       stream ? scratch : row, os_x, os_d);                                   \
        if (stream) stream_row(row, scratch, cw * D);                                         \
    }                                                                                         \
    if (stream) stream_fence();                                                               \
    FP_RETURN(-1);                                                                            \
}                                                                                             \
i64 crop_boxes_##SUF(const T* image, i64 is_b, i64 is_y, i64 is_x, i64 is_d, i64 B,           \
                     const int32_t* box_ind, i64 ch, i64 cw, i64 D,                           \
                     const i64* ylo, const i64* yhi, const float* ylerp, const uint8_t* yok,  \
                     const i64* xlo, const i64* xhi, const float* xlerp, const uint8_t* xok,  \
                     int nearest, float ev, float* out, i64 os_n, i64 os_y, i64 os_x,         \
                     i64 os_d, float* scratch, i64 n0, i64 n1) {                              \
    FP_ENTER;                                                                                \
    const i64 P = ch * cw; /* pixels of a crop */                                            \
    float* box = scratch;  /* (P, D): the crop, channels innermost */                         \
    float* planes = scratch + P * D; /* (D, P): the same, channel planes */                   \
    const int contiguous = os_x == 1 && os_y == cw && os_d == P;                              \
    for (i64 n = n0; n < n1; ++n) {                                                           \
        const i64 b = box_ind[n];                                                             \
        if (b < 0 || b >= B) FP_RETURN(n);                                                        \
        for (i64 y = 0; y < ch; ++y)                                                          \
            crop_row_##SUF(image + b * is_b, is_y, is_x, is_d, n, y, ch, cw, D,              \
                           ylo, yhi, ylerp, yok, xlo, xhi, xlerp, xok, nearest, ev,           \
                           box + y * cw * D, D, 1);                                           \
        if (contiguous) { /* blocked transpose, then one streamed block per box */           \
            transpose_f32(box, P, D, planes);                                                 \
            stream_row(out + n * os_n, planes, P * D);                                        \
        } else {                                                                              \
            for (i64 d = 0; d < D; ++d)                                                       \
                for (i64 y = 0; y < ch; ++y)                                                  \
                    for (i64 x = 0; x < cw; ++x)                                              \
                        out[n * os_n + d * os_d + y * os_y + x * os_x] =                      \
                            box[(y * cw + x) * D + d];                                        \
        }                                                                                     \
    }                                                                                         \
    stream_fence();                                                                           \
    FP_RETURN(-1);                                                                            \
}

/* TF's two terms of one axis of the box gradient: coordinates LO and HI (y1 and y2: 0, 2; x1 and
   x2: 1, 3), for the sample STEP (y or x) of an axis of CROP samples over SIZE pixels. */
#define ADD_BOX_GRADS(LO, HI, GRAD, STEP, CROP, SIZE, RATIO)                                  \
    do {                                                                                      \
        if (CROP > 1) {                                                                       \
            grads_boxes[LO] += GRAD * (SIZE - 1 - STEP * RATIO);                              \
            grads_boxes[HI] += GRAD * (STEP * RATIO);                                         \
        } else {                                                                              \
            grads_boxes[LO] += GRAD * 0.5 * (SIZE - 1);                                       \
            grads_boxes[HI] += GRAD * 0.5 * (SIZE - 1);                                       \
        }                                                                                     \
    } while (0)

/* Box gradient: boxes [n0, n1). grads strides gs_* (NHWC order); out (N, 4) float32, zeroed.
   scratch: NULL, or depth * crop_height * crop_width floats for grads whose boxes are contiguous
   channel planes (NCHW): each box's planes are then transposed there first (in cache) instead of
   the caller transposing the whole gradient (a crop-sized copy through memory).
   Tables from the ratio-first coordinates. Loop order y, x, d as TF's, so each of the four sums
   adds its terms in TF's order. */
#define DEFINE_GRAD_BOXES(SUF, T, LOAD)                                                        \
i64 grad_boxes_##SUF(const float* grads, i64 gs_n, i64 gs_y, i64 gs_x, i64 gs_d,               \
                     const T* image, i64 is_b, i64 is_y, i64 is_x, i64 is_d, i64 B,           \
                     i64 image_height, i64 image_width,                                       \
                     const int32_t* box_ind, i64 crop_height, i64 crop_width, i64 depth,      \
                     const i64* ylo, const i64* yhi, const float* ylerp, const uint8_t* yok,  \
                     const i64* xlo, const i64* xhi, const float* xlerp, const uint8_t* xok,  \
                     float* out, float* scratch, i64 n0, i64 n1) {                            \
    FP_ENTER;                                                                                \
    const float height_ratio =                                                                \
        (crop_height > 1) ? (float)(image_height - 1) / (crop_height - 1) : 0;                \
    const float width_ratio =                                                                 \
        (crop_width > 1) ? (float)(image_width - 1) / (crop_width - 1) : 0;                   \
    for (i64 b = n0; b < n1; ++b) {                                                           \
        const i64 b_in = box_ind[b];                                                          \
        if (b_in < 0 || b_in >= B) FP_RETURN(b);                                                  \
        float* grads_boxes = out + 4 * b;                                                     \
        const T* img = image + b_in * is_b;                                                   \
        const float* gb = grads + b * gs_n;                                                   \
        i64 gy = gs_y, gx = gs_x, gd = gs_d;                                                  \
        if (scratch != NULL) { /* NCHW grads: this box's planes, channels innermost */        \
            transpose_f32(gb, depth, crop_height * crop_width, scratch);                      \
            if (b + 1 < n1) prefetch_block(gb + gs_n, depth * crop_height * crop_width);      \
            gb = scratch, gy = crop_width * depth, gx = depth, gd = 1;                        \
        }                                                                                     \
        for (i64 y = 0; y < crop_height; ++y) {                                               \
            const i64 ry = b * crop_height + y;                                               \
            if (!yok[ry]) continue;                                                           \
            const T* top = img + ylo[ry] * is_y;                                              \
            const T* bottom = img + yhi[ry] * is_y;                                           \
            const float y_lerp = ylerp[ry];                                                   \
            for (i64 x = 0; x < crop_width; ++x) {                                            \
                const i64 rx = b * crop_width + x;                                            \
                if (!xok[rx]) continue;                                                       \
                const i64 left = xlo[rx] * is_x, right = xhi[rx] * is_x;                      \
                const float x_lerp = xlerp[rx];                                               \
                const float* g = gb + y * gy + x * gx;                                        \
                for (i64 d = 0; d < depth; ++d) {                                             \
                    const i64 c = d * is_d;                                                   \
                    const cropcore_slopes s = cropcore_image_slopes(                          \
                        LOAD(top + left + c), LOAD(top + right + c), LOAD(bottom + left + c), \
                        LOAD(bottom + right + c), x_lerp, y_lerp, g[d * gd]);                 \
                    const float image_grad_y = s.y, image_grad_x = s.x;                       \
                    ADD_BOX_GRADS(0, 2, image_grad_y, y, crop_height, image_height,           \
                                  height_ratio);                                              \
                    ADD_BOX_GRADS(1, 3, image_grad_x, x, crop_width, image_width,             \
                                  width_ratio);                                               \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    FP_RETURN(-1);                                                                            \
}

/* Image gradient, accumulated in T (float or double): every box, in order, whose image index is
   in [b0, b1), so a split over images keeps TF's order of additions per pixel. out zeroed.
   scratch: as for the box gradient (NCHW grads transposed box by box, in cache); the order of
   the additions is the same either way. */
#define DEFINE_GRAD_IMAGE(SUF, T)                                                              \
i64 grad_image_##SUF(const float* grads, i64 gs_n, i64 gs_y, i64 gs_x, i64 gs_d,               \
                     const int32_t* box_ind, i64 N, i64 ch, i64 cw, i64 D,                    \
                     const i64* ylo, const i64* yhi, const float* ylerp, const uint8_t* yok,  \
                     const i64* xlo, const i64* xhi, const float* xlerp, const uint8_t* xok,  \
                     int nearest, T* out, i64 os_b, i64 os_y, i64 os_x, i64 os_d, i64 B,      \
                     float* scratch, i64 b0, i64 b1) {                                        \
    FP_ENTER;                                                                                \
    for (i64 b = 0; b < N; ++b) {                                                             \
        const i64 b_in = box_ind[b];                                                          \
        if (b_in < 0 || b_in >= B) FP_RETURN(b);                                                  \
        if (b_in < b0 || b_in >= b1) continue;                                                \
        T* img = out + b_in * os_b;                                                           \
        const float* gb = grads + b * gs_n;                                                   \
        i64 gy = gs_y, gx = gs_x, gd = gs_d;                                                  \
        if (scratch != NULL) { /* NCHW grads: this box's planes, channels innermost */        \
            transpose_f32(gb, D, ch * cw, scratch);                                           \
            if (b + 1 < N) prefetch_block(gb + gs_n, D * ch * cw);                            \
            gb = scratch, gy = cw * D, gx = D, gd = 1;                                        \
        }                                                                                     \
        for (i64 y = 0; y < ch; ++y) {                                                        \
            const i64 ry = b * ch + y;                                                        \
            if (!yok[ry]) continue;                                                           \
            T* top = img + ylo[ry] * os_y;                                                    \
            T* bottom = img + yhi[ry] * os_y;                                                 \
            const float y_lerp = ylerp[ry];                                                   \
            for (i64 x = 0; x < cw; ++x) {                                                    \
                const i64 rx = b * cw + x;                                                    \
                if (!xok[rx]) continue;                                                       \
                const float* g = gb + y * gy + x * gx;                                        \
                const i64 left = xlo[rx] * os_x, right = xhi[rx] * os_x;                      \
                if (nearest) {                                                                \
                    for (i64 d = 0; d < D; ++d)                                               \
                        top[left + d * os_d] += (T)(g[d * gd]);                               \
                    continue;                                                                 \
                }                                                                             \
                const float x_lerp = xlerp[rx];                                               \
                for (i64 d = 0; d < D; ++d) {                                                 \
                    const i64 c = d * os_d;                                                   \
                    const cropcore_corners add = cropcore_spread(g[d * gd], x_lerp, y_lerp);  \
                    top[left + c] += (T)add.top_left;                                         \
                    top[right + c] += (T)add.top_right;                                       \
                    bottom[left + c] += (T)add.bottom_left;                                   \
                    bottom[right + c] += (T)add.bottom_right;                                 \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    FP_RETURN(-1);                                                                            \
}

/* A batch of transposes: dst (N, P, D) from src (N, D, P), whose matrices are src_n apart (an NCHW
   tensor to channels innermost: D channels, P pixels; or back, with D and P swapped); torch's
   strided copy of the same permutation was 3 to 10 times slower here. Matrices [n0, n1). */
i64 planes_to_channels_f32(const float* src, i64 src_n, i64 D, i64 P, float* dst, i64 n0,
                           i64 n1) {
    for (i64 n = n0; n < n1; ++n) transpose_f32(src + n * src_n, D, P, dst + n * P * D);
    return -1;
}

/* The samples of one crop axis for boxes [0, N): TF's in_y (or in_x) for every box and crop row,
   with the range test, neighbours and weights (the tables the loops above read; (N, crop) each).
   axis 0: rows (box columns 0 and 2, the image height); axis 1: columns (1 and 3, the width).
   ratio_first: CropAndResizeGradBoxes' rounding of the scale. Out-of-range samples (NaN and inf
   included) get valid 0 and zero indices and weight. size <= 2**24 and crop < 2**31 (the caller
   checks). */
void samples(const float* boxes, i64 N, i64 axis, i64 size, i64 crop, int ratio_first,
             i64* low, i64* high, i64* nearest, float* lerp, uint8_t* valid) {
    FP_ENTER;
    for (i64 n = 0; n < N; ++n) {
        const cropcore_axis a = cropcore_make_axis(boxes[4 * n + axis], boxes[4 * n + axis + 2],
                                                   (int)size, (int)crop, ratio_first);
        for (i64 y = 0; y < crop; ++y) {
            const i64 i = n * crop + y;
            const cropcore_sample sy = cropcore_sample_at(cropcore_coord(a, (int)y), (int)size);
            valid[i] = (uint8_t)sy.valid;
            low[i] = sy.low;
            high[i] = sy.high;
            nearest[i] = sy.nearest;
            lerp[i] = sy.lerp;
        }
    }
    cropcore_fp_leave(fp_saved_);
}

DEFINE_CROP(u8, uint8_t, LOAD_CAST)
DEFINE_CROP(u16, uint16_t, LOAD_CAST)
DEFINE_CROP(i8, int8_t, LOAD_CAST)
DEFINE_CROP(i16, int16_t, LOAD_CAST)
DEFINE_CROP(i32, int32_t, LOAD_CAST)
DEFINE_CROP(i64, int64_t, LOAD_CAST)
DEFINE_CROP(f16, uint16_t, LOAD_HALF)
DEFINE_CROP(f32, float, LOAD_CAST)
DEFINE_CROP(f64, double, LOAD_CAST)


DEFINE_GRAD_BOXES(u8, uint8_t, LOAD_CAST)
DEFINE_GRAD_BOXES(u16, uint16_t, LOAD_CAST)
DEFINE_GRAD_BOXES(i8, int8_t, LOAD_CAST)
DEFINE_GRAD_BOXES(i16, int16_t, LOAD_CAST)
DEFINE_GRAD_BOXES(i32, int32_t, LOAD_CAST)
DEFINE_GRAD_BOXES(i64, int64_t, LOAD_CAST)
DEFINE_GRAD_BOXES(f16, uint16_t, LOAD_HALF)
DEFINE_GRAD_BOXES(f32, float, LOAD_CAST)
DEFINE_GRAD_BOXES(f64, double, LOAD_CAST)

DEFINE_GRAD_IMAGE(f32, float)
DEFINE_GRAD_IMAGE(f64, double)

/* roi_align (torchvision's arithmetic, as cropcore_numba.roi_align's kernels, operation for
   operation): no flush-to-zero here (torchvision and ONNX Runtime compute with IEEE subnormals),
   so these functions do not enter TF's floating-point modes. T is the compute dtype (float for
   float16 and float32 images, double for float64). Tables are cropcore.roi_samples' (C-contiguous):
   y_* (N, PH, GY), x_* (N, PW, GX); inside as uint8; frac and rest in T. */

#define ROI_STD_MAX(a, b) ((a) < (b) ? (b) : (a)) /* C++'s std::max(a, b) */

/* Forward, boxes [n0, n1): image NHWC contiguous (B, H, W, D) in T; out (N, bins, D), or
   (N, D, bins) when channels_first, in T, every element written; tile: bins * D of T (the box,
   channels innermost). count[k]: max(grid_h * grid_w, 1). A box whose image index is outside
   [0, B) gets NaN (the torch ops' rule for unchecked indices; nothing of the image is read). */
#define DEFINE_ROI_FORWARD(SUF, T)                                                             \
i64 roi_forward_##SUF(const T* image, i64 B, i64 H, i64 W, i64 D, const int32_t* box_ind,     \
                      i64 PH, i64 PW, i64 GY, i64 GX,                                         \
                      const uint8_t* y_in, const i64* y_low, const i64* y_high,               \
                      const T* y_frac, const T* y_rest,                                       \
                      const uint8_t* x_in, const i64* x_low, const i64* x_high,               \
                      const T* x_frac, const T* x_rest,                                       \
                      const i64* grid_h, const i64* grid_w, const T* count, int max_mode,     \
                      int channels_first, T* out, T* tile, i64 n0, i64 n1) {                  \
    const i64 bins = PH * PW;                                                                 \
    const T zero = 0;                                                                         \
    for (i64 k = n0; k < n1; ++k) {                                                           \
        const i64 b = box_ind[k];                                                             \
        T* o = out + k * bins * D;                                                            \
        if (b < 0 || b >= B) {                                                                \
            for (i64 i = 0; i < bins * D; ++i) o[i] = (T)NAN;                                 \
            continue;                                                                         \
        }                                                                                     \
        const T* img = image + b * H * W * D;                                                 \
        const i64 gh = grid_h[k], gw = grid_w[k];                                             \
        for (i64 ph = 0; ph < PH; ++ph) {                                                     \
            const i64 ry = (k * PH + ph) * GY;                                                \
            for (i64 pw = 0; pw < PW; ++pw) {                                                 \
                const i64 rx = (k * PW + pw) * GX;                                            \
                T* restrict row = tile + (ph * PW + pw) * D;                                  \
                for (i64 c = 0; c < D; ++c) row[c] = zero;                                    \
                int first = 1;                                                                \
                for (i64 iy = 0; iy < gh; ++iy) {                                             \
                    for (i64 ix = 0; ix < gw; ++ix) {                                         \
                        T w1 = zero, w2 = zero, w3 = zero, w4 = zero;                         \
                        i64 yl = 0, yh = 0, xl = 0, xh = 0;                                   \
                        if (y_in[ry + iy] && x_in[rx + ix]) {                                 \
                            const T hy = y_rest[ry + iy], ly = y_frac[ry + iy];               \
                            const T hx = x_rest[rx + ix], lx = x_frac[rx + ix];               \
                            w1 = hy * hx, w2 = hy * lx, w3 = ly * hx, w4 = ly * lx;           \
                            yl = y_low[ry + iy], yh = y_high[ry + iy];                        \
                            xl = x_low[rx + ix], xh = x_high[rx + ix];                        \
                        }                                                                     \
                        const T* restrict v1 = img + (yl * W + xl) * D;                       \
                        const T* restrict v2 = img + (yl * W + xh) * D;                       \
                        const T* restrict v3 = img + (yh * W + xl) * D;                       \
                        const T* restrict v4 = img + (yh * W + xh) * D;                       \
                        if (max_mode) {                                                       \
                            for (i64 c = 0; c < D; ++c) {                                     \
                                const T p1 = w1 * v1[c], p2 = w2 * v2[c];                     \
                                const T p3 = w3 * v3[c], p4 = w4 * v4[c];                     \
                                const T val = ROI_STD_MAX(                                    \
                                    ROI_STD_MAX(ROI_STD_MAX(p1, p2), p3), p4);                \
                                row[c] = first ? val : ROI_STD_MAX(row[c], val);              \
                            }                                                                 \
                        } else {                                                              \
                            for (i64 c = 0; c < D; ++c)                                       \
                                row[c] += ((w1 * v1[c] + w2 * v2[c]) + w3 * v3[c])            \
                                          + w4 * v4[c];                                       \
                        }                                                                     \
                        first = 0;                                                            \
                    }                                                                         \
                }                                                                             \
                if (!max_mode) {                                                              \
                    const T n = count[k];                                                     \
                    for (i64 c = 0; c < D; ++c) row[c] = row[c] / n;                          \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        if (channels_first) {                                                                 \
            for (i64 c = 0; c < D; ++c)                                                       \
                for (i64 i = 0; i < bins; ++i) o[c * bins + i] = tile[i * D + c];             \
        } else {                                                                              \
            memcpy(o, tile, (size_t)(bins * D) * sizeof(T));                                  \
        }                                                                                     \
    }                                                                                         \
    return -1;                                                                                \
}

DEFINE_ROI_FORWARD(f32, float)
DEFINE_ROI_FORWARD(f64, double)

/* Image gradient, channels [c0, c1): acc (B, H, W, D), T, NHWC contiguous) = roi_align's
   image gradient of grads (N, bins, D), or (N, D, bins) when channels_first, in T: per corner
   acc += (g * w) / count, in torchvision's order (boxes, bins, samples, corners). Each channel
   is summed by one call, in that order, so the result does not depend on how the channels are
   split over threads. inverse[k]: 1 / count[k] where count[k] is a power of two (then
   x / count == x * inverse exactly), else 0. scratch: bins * (c1 - c0) of T (the box's gradient,
   channels innermost). Boxes without samples or with an image index outside [0, B) add nothing.
   The channels are zeroed first, by the call that sums them (acc may be recycled memory). */
/* a[c] += (g[c] * w) * scale, or (g[c] * w) / n where scale is 0, for c in [0, width): one corner
   of one sample (a and g never overlap; a helper so that the compiler may assume it). */
#define DEFINE_ROI_SPREAD(SUF, T)                                                              \
static inline void roi_spread_##SUF(T* restrict a, const T* restrict g, T w, T scale, T n,    \
                                    i64 width) {                                              \
    if (scale != (T)0) {                                                                      \
        for (i64 c = 0; c < width; ++c) a[c] += (g[c] * w) * scale;                           \
    } else {                                                                                  \
        for (i64 c = 0; c < width; ++c) a[c] += (g[c] * w) / n;                               \
    }                                                                                         \
}

#define DEFINE_ROI_GRAD(SUF, T)                                                                \
i64 roi_grad_##SUF(const T* grads, i64 B, i64 H, i64 W, i64 D, const int32_t* box_ind, i64 N, \
                   i64 PH, i64 PW, i64 GY, i64 GX,                                            \
                   const uint8_t* y_in, const i64* y_low, const i64* y_high,                  \
                   const T* y_frac, const T* y_rest,                                          \
                   const uint8_t* x_in, const i64* x_low, const i64* x_high,                  \
                   const T* x_frac, const T* x_rest,                                          \
                   const i64* grid_h, const i64* grid_w, const T* count, const T* inverse,    \
                   int channels_first, T* acc, T* scratch, i64 c0, i64 c1) {                  \
    const i64 bins = PH * PW, width = c1 - c0;                                                \
    const T zero = 0;                                                                         \
    for (i64 p = 0; p < B * H * W; ++p)                                                       \
        for (i64 c = 0; c < width; ++c) acc[p * D + c0 + c] = zero;                           \
    for (i64 k = 0; k < N; ++k) {                                                             \
        const i64 b = box_ind[k], gh = grid_h[k], gw = grid_w[k];                             \
        if (b < 0 || b >= B || gh * gw == 0) continue;                                        \
        for (i64 i = 0; i < bins; ++i)                                                        \
            for (i64 c = 0; c < width; ++c)                                                   \
                scratch[i * width + c] = channels_first ? grads[(k * D + c0 + c) * bins + i]  \
                                                        : grads[(k * bins + i) * D + c0 + c]; \
        T* img = acc + b * H * W * D + c0;                                                    \
        const T n = count[k], scale = inverse[k];                                             \
        for (i64 ph = 0; ph < PH; ++ph) {                                                     \
            const i64 ry = (k * PH + ph) * GY;                                                \
            for (i64 pw = 0; pw < PW; ++pw) {                                                 \
                const i64 rx = (k * PW + pw) * GX;                                            \
                const T* gi = scratch + (ph * PW + pw) * width;                               \
                for (i64 iy = 0; iy < gh; ++iy) {                                             \
                    if (!y_in[ry + iy]) continue;                                             \
                    const T hy = y_rest[ry + iy], ly = y_frac[ry + iy];                       \
                    const i64 yl = y_low[ry + iy], yh = y_high[ry + iy];                      \
                    for (i64 ix = 0; ix < gw; ++ix) {                                         \
                        if (!x_in[rx + ix]) continue;                                         \
                        const T hx = x_rest[rx + ix], lx = x_frac[rx + ix];                   \
                        const T w1 = hy * hx, w2 = hy * lx, w3 = ly * hx, w4 = ly * lx;       \
                        const i64 xl = x_low[rx + ix], xh = x_high[rx + ix];                  \
                        /* one loop per corner: the corners may be the same pixel, and each   \
                           element still gets its four terms in order */                      \
                        roi_spread_##SUF(img + (yl * W + xl) * D, gi, w1, scale, n, width);   \
                        roi_spread_##SUF(img + (yl * W + xh) * D, gi, w2, scale, n, width);   \
                        roi_spread_##SUF(img + (yh * W + xl) * D, gi, w3, scale, n, width);   \
                        roi_spread_##SUF(img + (yh * W + xh) * D, gi, w4, scale, n, width);   \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    return -1;                                                                                \
}

DEFINE_ROI_SPREAD(f32, float)
DEFINE_ROI_SPREAD(f64, double)
DEFINE_ROI_GRAD(f32, float)
DEFINE_ROI_GRAD(f64, double)

#include "_native_planes.c" /* the NCHW plane-block loops: crop_planes_f32, grad_image_planes_* */
#include "_native_small.c" /* small calls in one call: crop_once_*, grad_image_packed_* */
