"""Compiled CPU loops for the torch backend: TF's loop nests over the tables of :mod:`.kernels`.

Why: composed torch ops make about thirteen passes over a crop-sized tensor (four gathers and nine
float32 operations, since fusing them into ``addcmul``/``lerp`` would round differently), and
measured on the ROI workload that is several times slower than TensorFlow's single fused loop.
These loops make one pass, read the image once per sample and write the result once.

Requirements:

- **Exactly TF's arithmetic.** Each loop body is the C++ of
  ``tensorflow/core/kernels/image/crop_and_resize_op.cc``, expression for expression, compiled with
  ``-ffp-contract=off`` (no FMA) and without fast-math, and run under TF's floating-point modes
  (flush-to-zero, denormals-are-zero). The per-box sample tables (indices, weights, range flags)
  are those of :func:`cropcore_torch.kernels.box_samples`, computed by a compiled loop too (a few
  dozen small torch operations would dominate the cost of small calls); the tests hold the two
  equal.
- **Optional.** The C source below is compiled once per machine with the system's C compiler
  (``$CC``, else ``cc``, ``gcc`` or ``clang``) into ``$CROPCORE_CACHE_DIR`` (default
  ``~/.cache/cropcore``) and loaded with :mod:`ctypes`. Without a compiler, or with
  ``CROPCORE_TORCH_NATIVE=0``, the torch backend runs :mod:`.kernels` instead: same results,
  slower.
- **Safe.** A box index outside ``[0, batch)`` is reported before anything is read (the caller
  raises ``IndexError``), so the unvalidated entry point cannot read outside the image either.
- **Any layout.** Every array is addressed through its four strides, so NCHW, NHWC,
  channels-last and sliced tensors are read and written in place; only NCHW tensors with more
  than :data:`_FEW_CHANNELS` channels are first transposed to channels innermost (when that costs
  less than the result), because walking channel planes per sample reads a cache line per value.
- **Threads.** ctypes releases the GIL; large calls are split into chunks of box rows or boxes
  (forward), boxes (box gradient) or images (image gradient: each image's pixels are summed by
  one thread, in TF's order, so the result does not depend on the split), taken in turn by the
  calling thread and ``torch.get_num_threads() - 1`` pool threads. Large results are written with
  non-temporal stores.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from cropcore_torch import kernels

__all__ = [
    "available",
    "crop_and_resize",
    "crop_and_resize_grad_boxes",
    "crop_and_resize_grad_image",
    "status",
]

logger = logging.getLogger("cropcore.torch")

# Image dtypes, by the suffix of their C functions.
_SUFFIX = {
    torch.uint8: "u8",
    torch.uint16: "u16",
    torch.int8: "i8",
    torch.int16: "i16",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.float16: "f16",
    torch.float32: "f32",
    torch.float64: "f64",
}

_SOURCE = r"""
/* cropcore_torch native loops. Generated functions per image dtype; see _native.py. */
#include <stdint.h>
#include <string.h>
#include <math.h>

typedef int64_t i64;

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal half: normalise (exact in float32) */
            exp = 113;
            while (!(mant & 0x400u)) { mant <<= 1; exp--; }
            bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

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

/* TF's floating-point environment: its CPU thread pools run kernels with flush-to-zero and
   denormals-are-zero on (port::ScopedFlushDenormal), so a subnormal float operand counts as zero
   and a subnormal result becomes zero. Every exported function runs under the same modes and
   restores the caller's on return. */
#if defined(__SSE2__)
typedef unsigned int fpenv_t;
static inline fpenv_t fp_enter(void) {
    const fpenv_t saved = _mm_getcsr();
    _mm_setcsr(saved | 0x8040u); /* FTZ (bit 15) | DAZ (bit 6) */
    return saved;
}
static inline void fp_leave(fpenv_t saved) { _mm_setcsr(saved); }
#elif defined(__aarch64__)
typedef uint64_t fpenv_t;
static inline fpenv_t fp_enter(void) {
    fpenv_t saved;
    __asm__ volatile("mrs %0, fpcr" : "=r"(saved));
    __asm__ volatile("msr fpcr, %0" : : "r"(saved | (1ull << 24))); /* FZ: flush inputs and results */
    return saved;
}
static inline void fp_leave(fpenv_t saved) { __asm__ volatile("msr fpcr, %0" : : "r"(saved)); }
#else
typedef int fpenv_t; /* no known way here: subnormals underflow gradually */
static inline fpenv_t fp_enter(void) { return 0; }
static inline void fp_leave(fpenv_t saved) { (void)saved; }
#endif
#define FP_ENTER const fpenv_t fp_saved_ = fp_enter()
#define FP_RETURN(value) do { fp_leave(fp_saved_); return (value); } while (0)

#define LOAD_CAST(p) ((float)(*(p)))
#define LOAD_HALF(p) f16_to_f32(*(p))

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
                for (i64 d = 0; d < D; ++d) {                                                 \
                    const float top_left = LOAD(tl + d), top_right = LOAD(tr + d);            \
                    const float bottom_left = LOAD(bl + d), bottom_right = LOAD(br + d);      \
                    const float t = top_left + (top_right - top_left) * x_lerp;               \
                    const float bo = bottom_left + (bottom_right - bottom_left) * x_lerp;     \
                    ox[d] = t + (bo - t) * y_lerp;                                            \
                }                                                                             \
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
                const float top_left = LOAD(tp + left[x] * is_x);                             \
                const float top_right = LOAD(tp + right[x] * is_x);                           \
                const float bottom_left = LOAD(bp + left[x] * is_x);                          \
                const float bottom_right = LOAD(bp + right[x] * is_x);                        \
                const float x_lerp = x_lerps[x];                                              \
                const float t = top_left + (top_right - top_left) * x_lerp;                   \
                const float bo = bottom_left + (bottom_right - bottom_left) * x_lerp;         \
                od[x * os_x] = t + (bo - t) * y_lerp;                                         \
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
        if (contiguous) { /* tiled transpose, then one streamed block per box */             \
            for (i64 i0 = 0; i0 < P; i0 += 16)                                               \
                for (i64 d0 = 0; d0 < D; d0 += 16)                                           \
                    for (i64 i = i0; i < i0 + 16 && i < P; ++i)                               \
                        for (i64 d = d0; d < d0 + 16 && d < D; ++d)                           \
                            planes[d * P + i] = box[i * D + d];                               \
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

/* Box gradient: boxes [n0, n1). grads strides gs_* (NHWC order); out (N, 4) float32, zeroed.
   Tables from the ratio-first coordinates. Loop order y, x, d as TF's, so each of the four sums
   adds its terms in TF's order. */
#define DEFINE_GRAD_BOXES(SUF, T, LOAD)                                                        \
i64 grad_boxes_##SUF(const float* grads, i64 gs_n, i64 gs_y, i64 gs_x, i64 gs_d,               \
                     const T* image, i64 is_b, i64 is_y, i64 is_x, i64 is_d, i64 B,           \
                     i64 image_height, i64 image_width,                                       \
                     const int32_t* box_ind, i64 crop_height, i64 crop_width, i64 depth,      \
                     const i64* ylo, const i64* yhi, const float* ylerp, const uint8_t* yok,  \
                     const i64* xlo, const i64* xhi, const float* xlerp, const uint8_t* xok,  \
                     float* out, i64 n0, i64 n1) {                                            \
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
                const float* g = grads + b * gs_n + y * gs_y + x * gs_x;                      \
                for (i64 d = 0; d < depth; ++d) {                                             \
                    const i64 c = d * is_d;                                                   \
                    const float top_left = LOAD(top + left + c);                              \
                    const float top_right = LOAD(top + right + c);                            \
                    const float bottom_left = LOAD(bottom + left + c);                        \
                    const float bottom_right = LOAD(bottom + right + c);                      \
                    float image_grad_y = (1 - x_lerp) * (bottom_left - top_left) +            \
                                         x_lerp * (bottom_right - top_right);                 \
                    float image_grad_x = (1 - y_lerp) * (top_right - top_left) +              \
                                         y_lerp * (bottom_right - bottom_left);               \
                    const float top_grad = g[d * gs_d];                                       \
                    image_grad_y *= top_grad;                                                 \
                    image_grad_x *= top_grad;                                                 \
                    if (crop_height > 1) {                                                    \
                        grads_boxes[0] +=                                                     \
                            image_grad_y * (image_height - 1 - y * height_ratio);             \
                        grads_boxes[2] += image_grad_y * (y * height_ratio);                  \
                    } else {                                                                  \
                        grads_boxes[0] += image_grad_y * 0.5 * (image_height - 1);            \
                        grads_boxes[2] += image_grad_y * 0.5 * (image_height - 1);            \
                    }                                                                         \
                    if (crop_width > 1) {                                                     \
                        grads_boxes[1] +=                                                     \
                            image_grad_x * (image_width - 1 - x * width_ratio);               \
                        grads_boxes[3] += image_grad_x * (x * width_ratio);                   \
                    } else {                                                                  \
                        grads_boxes[1] += image_grad_x * 0.5 * (image_width - 1);             \
                        grads_boxes[3] += image_grad_x * 0.5 * (image_width - 1);             \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    FP_RETURN(-1);                                                                            \
}

/* Image gradient, accumulated in T (float or double): every box, in order, whose image index is
   in [b0, b1), so a split over images keeps TF's order of additions per pixel. out zeroed. */
#define DEFINE_GRAD_IMAGE(SUF, T)                                                              \
i64 grad_image_##SUF(const float* grads, i64 gs_n, i64 gs_y, i64 gs_x, i64 gs_d,               \
                     const int32_t* box_ind, i64 N, i64 ch, i64 cw, i64 D,                    \
                     const i64* ylo, const i64* yhi, const float* ylerp, const uint8_t* yok,  \
                     const i64* xlo, const i64* xhi, const float* xlerp, const uint8_t* xok,  \
                     int nearest, T* out, i64 os_b, i64 os_y, i64 os_x, i64 os_d, i64 B,      \
                     i64 b0, i64 b1) {                                                        \
    FP_ENTER;                                                                                \
    for (i64 b = 0; b < N; ++b) {                                                             \
        const i64 b_in = box_ind[b];                                                          \
        if (b_in < 0 || b_in >= B) FP_RETURN(b);                                                  \
        if (b_in < b0 || b_in >= b1) continue;                                                \
        T* img = out + b_in * os_b;                                                           \
        for (i64 y = 0; y < ch; ++y) {                                                        \
            const i64 ry = b * ch + y;                                                        \
            if (!yok[ry]) continue;                                                           \
            T* top = img + ylo[ry] * os_y;                                                    \
            T* bottom = img + yhi[ry] * os_y;                                                 \
            const float y_lerp = ylerp[ry];                                                   \
            for (i64 x = 0; x < cw; ++x) {                                                    \
                const i64 rx = b * cw + x;                                                    \
                if (!xok[rx]) continue;                                                       \
                const float* g = grads + b * gs_n + y * gs_y + x * gs_x;                      \
                const i64 left = xlo[rx] * os_x, right = xhi[rx] * os_x;                      \
                if (nearest) {                                                                \
                    for (i64 d = 0; d < D; ++d)                                               \
                        top[left + d * os_d] += (T)(g[d * gs_d]);                             \
                    continue;                                                                 \
                }                                                                             \
                const float x_lerp = xlerp[rx];                                               \
                for (i64 d = 0; d < D; ++d) {                                                 \
                    const i64 c = d * os_d;                                                   \
                    const float dtop = (1 - y_lerp) * g[d * gs_d];                            \
                    top[left + c] += (T)((1 - x_lerp) * dtop);                                \
                    top[right + c] += (T)(x_lerp * dtop);                                     \
                    const float dbottom = y_lerp * g[d * gs_d];                               \
                    bottom[left + c] += (T)((1 - x_lerp) * dbottom);                          \
                    bottom[right + c] += (T)(x_lerp * dbottom);                               \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    FP_RETURN(-1);                                                                            \
}

/* The samples of one crop axis for boxes [0, N): TF's in_y (or in_x) for every box and crop row,
   with the range test, neighbours and weights (the tables the loops below read; (N, crop) each).
   axis 0: rows (box columns 0 and 2, the image height); axis 1: columns (1 and 3, the width).
   ratio_first: CropAndResizeGradBoxes' rounding of the scale. Non-finite coordinates are out of
   range (TF's CPU kernel would cast them to int), indices are clamped to the image. */
void samples(const float* boxes, i64 N, i64 axis, i64 size, i64 crop, int ratio_first,
             i64* low, i64* high, i64* nearest, float* lerp, uint8_t* valid) {
    FP_ENTER;
    const float last = (float)(size - 1); /* `image_height - 1`, an int converted to float */
    for (i64 n = 0; n < N; ++n) {
        const float y1 = boxes[4 * n + axis], y2 = boxes[4 * n + axis + 2];
        float height_scale = 0;
        if (crop > 1) {
            if (ratio_first) {
                const float height_ratio = (float)(size - 1) / (crop - 1);
                height_scale = (y2 - y1) * height_ratio;
            } else {
                height_scale = (y2 - y1) * (size - 1) / (crop - 1);
            }
        }
        for (i64 y = 0; y < crop; ++y) {
            const i64 i = n * crop + y;
            /* crop 1: the double literal 0.5 makes the products double, rounded once to float */
            const float in_y = (crop > 1) ? y1 * (size - 1) + y * height_scale
                                          : 0.5 * (y1 + y2) * (size - 1);
            if (!(in_y >= 0 && in_y <= last)) { /* TF: in_y < 0 || in_y > H - 1, NaN-safe */
                valid[i] = 0;
                low[i] = high[i] = nearest[i] = 0;
                lerp[i] = 0;
                continue;
            }
            const i64 top = (i64)in_y; /* floorf: in_y >= 0 */
            const float y_lerp = in_y - top; /* exact; -0.0 for in_y == -0.0 */
            valid[i] = 1;
            low[i] = top < size - 1 ? top : size - 1;
            high[i] = top + (y_lerp > 0) < size - 1 ? top + (y_lerp > 0) : size - 1; /* ceilf */
            nearest[i] = top + (y_lerp >= 0.5f) < size - 1 ? top + (y_lerp >= 0.5f) : size - 1;
            lerp[i] = y_lerp;
        }
    }
    fp_leave(fp_saved_);
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
"""

# -fp-contract=off: no FMA; no -ffast-math; -fno-math-errno only lets floorf/ceilf inline.
_FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno"]
_MARCH = ["-march=native"]

_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib": the CDLL, or "error": why there is none
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0

# Work per thread below which a call runs on the calling thread alone (output elements).
_MIN_WORK_PER_THREAD = 1 << 16
# Results larger than this are written with non-temporal stores (they would not stay in cache).
_STREAM_BYTES = 8 << 20
# Up to this many channels, NCHW images and results are read and written plane by plane in place;
# with more, the loops work channels innermost and transpose.
_FEW_CHANNELS = 4

_I64, _F32, _INT, _PTR = ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.c_void_p
_TABLES = [_PTR] * 8


def _signatures() -> dict[str, list]:
    crop = [_PTR, _I64, _I64, _I64, _I64, _I64, _PTR, _I64, _I64, _I64, *_TABLES, _INT, _F32]
    crop += [_PTR, _I64, _I64, _I64, _I64, _PTR, _I64, _I64]
    boxes = [_PTR, _I64, _I64, _I64, _I64, _PTR, _I64, _I64, _I64, _I64, _I64, _I64, _I64]
    boxes += [_PTR, _I64, _I64, _I64, *_TABLES, _PTR, _I64, _I64]
    image = [_PTR, _I64, _I64, _I64, _I64, _PTR, _I64, _I64, _I64, _I64, *_TABLES, _INT]
    image += [_PTR, _I64, _I64, _I64, _I64, _I64, _I64, _I64]
    names = {f"crop_{s}": crop for s in _SUFFIX.values()}
    names.update({f"crop_boxes_{s}": crop for s in _SUFFIX.values()})
    names.update({f"grad_boxes_{s}": boxes for s in _SUFFIX.values()})
    names.update({"grad_image_f32": image, "grad_image_f64": image})
    names["samples"] = [_PTR, _I64, _I64, _I64, _I64, _INT, _PTR, _PTR, _PTR, _PTR, _PTR]
    return names


def _cache_dirs() -> list[Path]:
    """Where to keep the compiled library: the configured or user cache, else a private temp dir."""
    configured = os.environ.get("CROPCORE_CACHE_DIR")
    if configured:
        return [Path(configured)]
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return [Path(base) / "cropcore", Path(tempfile.gettempdir()) / f"cropcore-{uid}"]


def _private_dir(path: Path) -> Path:
    """``path``, created if needed, refused unless only we can write to it (we load code from it)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if hasattr(os, "getuid"):
        st = path.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise PermissionError(f"{path} is writable by other users; not loading code from it")
    return path


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor()


def _build() -> ctypes.CDLL:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")
    key = hashlib.sha256(
        "\0".join([_SOURCE, compiler, *_FLAGS, *_MARCH, _cpu_id(), sys.platform]).encode()
    ).hexdigest()[:16]
    errors = []
    for directory in _cache_dirs():
        try:
            return _load(_compiled(compiler, _private_dir(directory), key))
        except OSError as exc:  # an unwritable cache: try the next place
            errors.append(f"{directory}: {exc}")
    raise OSError("; ".join(errors))


def _compiled(compiler: str, directory: Path, key: str) -> Path:
    """The compiled library in ``directory``, compiling it there first if it is not yet."""
    target = directory / f"cropcore_torch_native_{key}.so"
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            source = Path(tmp) / "native.c"
            source.write_text(_SOURCE)
            built = Path(tmp) / "native.so"
            for march in (_MARCH, []):  # a compiler without -march=native still builds
                command = [compiler, *_FLAGS, *march, str(source), "-o", str(built), "-lm"]
                result = subprocess.run(command, capture_output=True, text=True, timeout=300)
                if result.returncode == 0:
                    break
            else:
                raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()[-2000:]}")
            os.replace(built, target)  # atomic: concurrent builders each install a whole file
        logger.debug("compiled the native CPU kernels into %s", target)
    return target


def _load(target: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(target))
    for name, argtypes in _signatures().items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = None if name == "samples" else _I64
    return lib


def _library() -> ctypes.CDLL | None:
    """The compiled kernels, building them the first time; ``None`` when they cannot be had."""
    if os.environ.get("CROPCORE_TORCH_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    lib = _state.get("lib")
    if lib is not None or "error" in _state:
        return lib  # type: ignore[return-value]
    with _lock:
        if "lib" not in _state and "error" not in _state:
            try:
                _state["lib"] = _build()
            except Exception as exc:  # no compiler, a read-only home, ...: the torch ops still work
                _state["error"] = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "cropcore's torch backend runs without its compiled CPU kernels (slower, "
                    "same results): %s",
                    _state["error"],
                )
    return _state.get("lib")  # type: ignore[return-value]


def available() -> bool:
    """Whether the compiled CPU kernels are in use (compiling them on the first call)."""
    return _library() is not None


def status() -> str:
    """One line: whether the compiled CPU kernels are in use, and if not, why."""
    if _library() is not None:
        return "compiled CPU kernels in use"
    if "error" in _state:
        return f"compiled CPU kernels unavailable ({_state['error']}); torch ops in use"
    return "compiled CPU kernels disabled by CROPCORE_TORCH_NATIVE; torch ops in use"


# --------------------------------------------------------------------------------------------------
# Calling the loops


def _run_split(function, fixed: tuple, total: int, work: int, scratch=None) -> list[int]:
    """Call ``function(*fixed, [scratch,] start, stop)`` over ``[0, total)``, split across threads.

    ``work``: the number of output elements, to decide whether threads are worth it. ``scratch``:
    makes a per-thread argument (a buffer's address) and the tensor that owns its memory.

    The range is cut into a few chunks per thread that the calling thread and the pool's threads
    take in turn, so that a thread the OS has descheduled (a busy machine) delays the call by one
    chunk, not by half of it.
    """
    threads = min(torch.get_num_threads(), total, max(1, work // _MIN_WORK_PER_THREAD))
    pieces = 1 if threads <= 1 else min(total, 4 * threads)
    bounds = [total * i // pieces for i in range(pieces + 1)]
    chunks = [(a, b) for a, b in itertools.pairwise(bounds) if b > a]
    taken = iter(range(len(chunks)))
    lock = threading.Lock()

    def worker() -> list[int]:
        extra: tuple = ()
        owner = None
        if scratch is not None:
            pointer, owner = scratch()
            extra = (pointer,)
        results = []
        while True:
            with lock:
                i = next(taken, None)
            if i is None:
                del owner  # the scratch buffer lives until here
                return results
            results.append(function(*fixed, *extra, *chunks[i]))

    if threads <= 1:
        return worker()
    helpers = [_thread_pool().submit(worker) for _ in range(threads - 1)]
    results = worker()
    for helper in helpers:
        results += helper.result()
    return results


def _thread_pool() -> ThreadPoolExecutor:
    """This process's pool. A forked child (a DataLoader worker) gets a new one: the parent's
    threads do not exist there, and submitting to their pool would wait forever."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        with _lock:
            if _pool is None or _pool_pid != os.getpid():
                _pool = ThreadPoolExecutor(thread_name_prefix="cropcore-torch")
                _pool_pid = os.getpid()
    return _pool


def _check(results: list[int], box_indices: Tensor, batch: int) -> None:
    bad = [r for r in results if r >= 0]
    if bad:
        i = min(bad)
        raise IndexError(
            f"box_indices must be in [0, batch) = [0, {batch}); got box_indices[{i}] = "
            f"{int(box_indices[i])}"
        )


def _box_samples(
    lib: ctypes.CDLL,
    boxes: Tensor,
    image_height: int,
    image_width: int,
    crop_size: tuple[int, int],
    *,
    ratio_first: bool = False,
) -> tuple[kernels.Samples, kernels.Samples]:
    """:func:`cropcore_torch.kernels.box_samples`, computed by the compiled ``samples`` loop.

    The same tables, computed under TF's floating-point modes in one call per axis instead of a few
    dozen small torch operations (which dominate the cost of small calls).
    """
    boxes = boxes.to(torch.float32).contiguous()
    num_boxes = boxes.shape[0]
    result = []
    for axis, size, crop in ((0, image_height, crop_size[0]), (1, image_width, crop_size[1])):
        indices = torch.empty((3, num_boxes, crop), dtype=torch.int64)
        lerp = torch.empty((num_boxes, crop), dtype=torch.float32)
        valid = torch.empty((num_boxes, crop), dtype=torch.bool)
        if num_boxes:
            lib.samples(
                boxes.data_ptr(), num_boxes, axis, size, crop, int(ratio_first),
                *(t.data_ptr() for t in indices), lerp.data_ptr(), valid.data_ptr(),
            )  # fmt: skip
        low, high, nearest = indices
        result.append(kernels.Samples(valid, low, high, lerp, nearest))
    return result[0], result[1]


def _table_args(rows: kernels.Samples, cols: kernels.Samples, nearest: bool) -> list[int]:
    """Pointers to the eight tables (low, high, lerp, valid for rows, then for columns)."""
    args = []
    for s in (rows, cols):
        low = s.nearest if nearest else s.low
        args += [low.data_ptr(), s.high.data_ptr(), s.lerp.data_ptr(), s.valid.data_ptr()]
    return args


def _channels_innermost(x: Tensor) -> Tensor:
    """An NHWC view ``x``, copied so that channels are innermost unless they are or are few."""
    return x if x.stride(3) == 1 or x.shape[3] <= _FEW_CHANNELS else x.contiguous()


def _box_indices(
    box_indices: Tensor, boxes: Tensor, crops: int, depth: int, image_depth: int
) -> Tensor:
    """int32 contiguous box indices, after the shape checks the loops' memory safety rests on.

    The custom ops can be called directly (``torch.ops.cropcore.*``, TorchScript), so these run
    even when cropcore's validation did not; they read shapes only.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4 or box_indices.shape != (boxes.shape[0],):
        raise ValueError(
            f"boxes must be (num_boxes, 4) and box_indices (num_boxes,), got "
            f"{tuple(boxes.shape)} and {tuple(box_indices.shape)}"
        )
    if crops != boxes.shape[0] or depth != image_depth:
        raise ValueError(
            f"grads hold {crops} crops of depth {depth}; expected {boxes.shape[0]} of depth "
            f"{image_depth}"
        )
    return box_indices.to(torch.int32).contiguous()


def crop_and_resize(
    image: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    crop_size: tuple[int, int],
    method: str,
    extrapolation_value: float,
    channels_first: bool,
) -> Tensor:
    """:func:`cropcore_torch.kernels.crop_and_resize` on CPU tensors, in one compiled pass."""
    lib = _library()
    assert lib is not None
    image_nhwc = kernels.nhwc(image, channels_first)
    batch, image_height, image_width, depth = image_nhwc.shape
    crop_height, crop_width = crop_size
    num_boxes = boxes.shape[0]
    indices = _box_indices(box_indices, boxes, num_boxes, depth, depth)
    rows, cols = _box_samples(lib, boxes, image_height, image_width, crop_size)
    out = kernels.empty_output(
        (num_boxes, crop_height, crop_width, depth),
        torch.float32,
        image,
        channels_first,
        kernels.output_is_channels_last(image, channels_first),
    )
    if out.numel():
        few_channels = depth <= _FEW_CHANNELS
        if image_nhwc.stride(3) != 1 and not few_channels and image.numel() <= out.numel():
            # Channels innermost, as the loops read fastest: an NCHW image with many channels is
            # transposed once when that costs less than the result (otherwise, and with a few
            # channels, it is read channel by channel).
            image_nhwc = image_nhwc.contiguous()
        fixed = (
            image_nhwc.data_ptr(),
            *image_nhwc.stride(),
            batch,
            indices.data_ptr(),
            crop_height,
            crop_width,
            depth,
            *_table_args(rows, cols, method == "nearest"),
            int(method == "nearest"),
            float(extrapolation_value),
            out.data_ptr(),
            *out.stride(),
        )
        suffix = _SUFFIX[image.dtype]
        if out.stride(3) == 1 or few_channels:
            # Channels innermost in the result: one row of one box per unit; large results are
            # computed in scratch and streamed out.
            stream = out.numel() * 4 > _STREAM_BYTES
            function = getattr(lib, f"crop_{suffix}")
            units, scratch_size = num_boxes * crop_height, crop_width * depth
        else:
            # Channel planes (NCHW): one box per unit, computed channels innermost in scratch
            # and written out plane by plane.
            stream = True
            function = getattr(lib, f"crop_boxes_{suffix}")
            units, scratch_size = num_boxes, 2 * depth * crop_height * crop_width

        def scratch() -> tuple[int | None, Tensor | None]:
            if not stream:
                return None, None  # NULL: written in place
            buffer = torch.empty(scratch_size, dtype=torch.float32)
            return buffer.data_ptr(), buffer

        results = _run_split(function, fixed, units, out.numel(), scratch)
        _check(results, indices, batch)
    return out.permute(0, 3, 1, 2) if channels_first else out


def crop_and_resize_grad_image(
    grads: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    image_shape: tuple[int, int, int, int],
    method: str,
    dtype: torch.dtype,
    channels_first: bool,
) -> Tensor:
    """:func:`cropcore_torch.kernels.crop_and_resize_grad_image` for float32/float64 results."""
    lib = _library()
    assert lib is not None
    batch, image_height, image_width, depth = (int(d) for d in image_shape)
    grads_nhwc = kernels.nhwc(grads, channels_first)
    num_boxes, crop_height, crop_width, _ = grads_nhwc.shape
    indices = _box_indices(box_indices, boxes, num_boxes, grads_nhwc.shape[3], depth)
    rows, cols = _box_samples(lib, boxes, image_height, image_width, (crop_height, crop_width))
    # Channels innermost for the loops (a plane-strided walk over the channels of every pixel
    # would thrash the cache); NCHW callers get a transposed copy.
    grads_nhwc = _channels_innermost(grads_nhwc)
    out = torch.zeros((batch, image_height, image_width, depth), dtype=dtype)
    if out.numel() and grads_nhwc.numel():
        fixed = (
            grads_nhwc.data_ptr(),
            *grads_nhwc.stride(),
            indices.data_ptr(),
            num_boxes,
            crop_height,
            crop_width,
            depth,
            *_table_args(rows, cols, method == "nearest"),
            int(method == "nearest"),
            out.data_ptr(),
            *out.stride(),
            batch,
        )
        function = getattr(lib, "grad_image_f32" if dtype == torch.float32 else "grad_image_f64")
        _check(_run_split(function, fixed, batch, grads_nhwc.numel()), indices, batch)
    return out.permute(0, 3, 1, 2).contiguous() if channels_first else out


def crop_and_resize_grad_boxes(
    grads: Tensor,
    image: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    channels_first: bool,
) -> Tensor:
    """:func:`cropcore_torch.kernels.crop_and_resize_grad_boxes` on CPU tensors, compiled."""
    lib = _library()
    assert lib is not None
    # TF's order (rows, columns, channels) walks the channels of every pixel: channels innermost.
    image_nhwc = _channels_innermost(kernels.nhwc(image, channels_first))
    grads_nhwc = _channels_innermost(kernels.nhwc(grads, channels_first))
    batch, image_height, image_width, _ = image_nhwc.shape
    num_boxes, crop_height, crop_width, depth = grads_nhwc.shape
    indices = _box_indices(box_indices, boxes, num_boxes, depth, image_nhwc.shape[3])
    rows, cols = _box_samples(
        lib, boxes, image_height, image_width, (crop_height, crop_width), ratio_first=True
    )
    out = torch.zeros((num_boxes, 4), dtype=torch.float32)
    if num_boxes:
        fixed = (
            grads_nhwc.data_ptr(),
            *grads_nhwc.stride(),
            image_nhwc.data_ptr(),
            *image_nhwc.stride(),
            batch,
            image_height,
            image_width,
            indices.data_ptr(),
            crop_height,
            crop_width,
            depth,
            *_table_args(rows, cols, nearest=False),
            out.data_ptr(),
        )
        function = getattr(lib, f"grad_boxes_{_SUFFIX[image.dtype]}")
        _check(_run_split(function, fixed, num_boxes, grads_nhwc.numel()), indices, batch)
    return out
