/* A small forward in one call (issue 16: a ctypes call costs microseconds, a tiny crop's loops
   less): both axes' sample tables, computed into `tables` (29 * N * (ch + cw) bytes, laid out
   as _native._Tables describes, so that the image gradient can reuse them), then crop_SUF over
   every row on the calling thread, written in place (no scratch, no streaming). The caller
   decides when that is what fill_crops would do; sizes as samples and crop_SUF require. Returns
   what crop_SUF returns: -1, or a box whose image index is outside [0, B). */
#define DEFINE_CROP_ONCE(SUF, T)                                                               \
i64 crop_once_##SUF(const T* image, i64 is_b, i64 is_y, i64 is_x, i64 is_d, i64 B, i64 H,     \
                    i64 W, const float* boxes, const int32_t* box_ind, i64 N, i64 ch, i64 cw,  \
                    i64 D, uint8_t* tables, int nearest, float ev, float* out, i64 os_n,       \
                    i64 os_y, i64 os_x, i64 os_d) {                                            \
    const i64 rows = N * ch, cols = N * cw;                                                   \
    i64* row_low = (i64*)tables;                                                              \
    i64* col_low = row_low + 3 * rows;                                                        \
    float* lerp = (float*)(tables + 24 * (rows + cols));                                      \
    uint8_t* valid = tables + 28 * (rows + cols);                                             \
    samples(boxes, N, 0, H, ch, 0, row_low, row_low + rows, row_low + 2 * rows, lerp, valid); \
    samples(boxes, N, 1, W, cw, 0, col_low, col_low + cols, col_low + 2 * cols, lerp + rows,   \
            valid + rows);                                                                    \
    return crop_##SUF(image, is_b, is_y, is_x, is_d, B, box_ind, ch, cw, D,                   \
                      nearest ? row_low + 2 * rows : row_low, row_low + rows, lerp, valid,     \
                      nearest ? col_low + 2 * cols : col_low, col_low + cols, lerp + rows,     \
                      valid + rows, nearest, ev, out, os_n, os_y, os_x, os_d, NULL, 0, rows);  \
}

DEFINE_CROP_ONCE(u8, uint8_t)
DEFINE_CROP_ONCE(u16, uint16_t)
DEFINE_CROP_ONCE(i8, int8_t)
DEFINE_CROP_ONCE(i16, int16_t)
DEFINE_CROP_ONCE(i32, int32_t)
DEFINE_CROP_ONCE(i64, int64_t)
DEFINE_CROP_ONCE(f16, uint16_t)
DEFINE_CROP_ONCE(f32, float)
DEFINE_CROP_ONCE(f64, double)

/* crop_once_SUF with its integer arguments packed in one array (a ctypes call costs about 0.2 us
   per argument, more than the loops of a tiny crop): p[0..20] = image, is_b, is_y, is_x, is_d, B,
   H, W, boxes, box_ind, N, ch, cw, D, tables, nearest, out, os_n, os_y, os_x, os_d (pointers as
   integers). tables 0: allocated here and freed on return. Returns crop_once_SUF's value, or -2
   when the tables cannot be allocated. */
#include <stdlib.h>
#define P_(i) ((void*)(intptr_t)p[i])
#define DEFINE_CROP_PACKED(SUF, T)                                                             \
i64 crop_packed_##SUF(const i64* p, float ev) {                                               \
    uint8_t* tables = (uint8_t*)P_(14);                                                       \
    uint8_t* own = NULL;                                                                      \
    if (tables == NULL) {                                                                     \
        own = tables = (uint8_t*)malloc((size_t)(29 * p[10] * (p[11] + p[12])));              \
        if (own == NULL) return -2;                                                           \
    }                                                                                         \
    const i64 bad = crop_once_##SUF((const T*)P_(0), p[1], p[2], p[3], p[4], p[5], p[6],      \
                                    p[7], (const float*)P_(8), (const int32_t*)P_(9), p[10],  \
                                    p[11], p[12], p[13], tables, (int)p[15], ev,              \
                                    (float*)P_(16), p[17], p[18], p[19], p[20]);              \
    free(own);                                                                                \
    return bad;                                                                               \
}

DEFINE_CROP_PACKED(u8, uint8_t)
DEFINE_CROP_PACKED(u16, uint16_t)
DEFINE_CROP_PACKED(i8, int8_t)
DEFINE_CROP_PACKED(i16, int16_t)
DEFINE_CROP_PACKED(i32, int32_t)
DEFINE_CROP_PACKED(i64, int64_t)
DEFINE_CROP_PACKED(f16, uint16_t)
DEFINE_CROP_PACKED(f32, float)
DEFINE_CROP_PACKED(f64, double)

/* The image gradient of a small call in one call on the calling thread, its arguments packed as
   crop_packed_SUF's: p[0..20] = grads, gs_n, gs_y, gs_x, gs_d, box_ind, N, ch, cw, D, boxes, H,
   W, tables, nearest, out, os_b, os_y, os_x, os_d, B. tables: the forward's (laid out as
   _native._Tables describes), or 0: computed here from boxes (as samples, not ratio-first) and
   freed on return. out zeroed; strides in elements, NHWC order, any layout (each pixel still
   gets its terms in TF's order). Returns grad_image_SUF's value, or -2 when the tables cannot be
   allocated. */
#define DEFINE_GRAD_IMAGE_PACKED(SUF, T)                                                       \
i64 grad_image_packed_##SUF(const i64* p) {                                                   \
    const i64 N = p[6], ch = p[7], cw = p[8], rows = N * ch, cols = N * cw;                   \
    uint8_t* tables = (uint8_t*)P_(13);                                                       \
    uint8_t* own = NULL;                                                                      \
    if (tables == NULL) {                                                                     \
        own = tables = (uint8_t*)malloc((size_t)(29 * (rows + cols)));                        \
        if (own == NULL) return -2;                                                           \
    }                                                                                         \
    i64* row_low = (i64*)tables;                                                              \
    i64* col_low = row_low + 3 * rows;                                                        \
    float* lerp = (float*)(tables + 24 * (rows + cols));                                      \
    uint8_t* valid = tables + 28 * (rows + cols);                                             \
    if (own != NULL) {                                                                        \
        samples((const float*)P_(10), N, 0, p[11], ch, 0, row_low, row_low + rows,            \
                row_low + 2 * rows, lerp, valid);                                             \
        samples((const float*)P_(10), N, 1, p[12], cw, 0, col_low, col_low + cols,            \
                col_low + 2 * cols, lerp + rows, valid + rows);                               \
    }                                                                                         \
    const int nearest = (int)p[14];                                                           \
    const i64 bad = grad_image_##SUF(                                                         \
        (const float*)P_(0), p[1], p[2], p[3], p[4], (const int32_t*)P_(5), N, ch, cw, p[9],   \
        nearest ? row_low + 2 * rows : row_low, row_low + rows, lerp, valid,                  \
        nearest ? col_low + 2 * cols : col_low, col_low + cols, lerp + rows, valid + rows,    \
        nearest, (T*)P_(15), p[16], p[17], p[18], p[19], p[20], NULL, 0, p[20]);              \
    free(own);                                                                                \
    return bad;                                                                               \
}

DEFINE_GRAD_IMAGE_PACKED(f32, float)
DEFINE_GRAD_IMAGE_PACKED(f64, double)
