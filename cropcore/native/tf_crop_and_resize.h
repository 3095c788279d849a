/* TensorFlow's float32 CropAndResize arithmetic, one sample at a time: the single native source of
   it, compiled by the CUDA kernels (cropcore_cupy: NVRTC, nvcc, and host C++ in the tests) and by
   the torch backend's CPU loops (cropcore_torch: C99). Include directory: cropcore.native.include_dir().

   Requirements, in order:

   1. Every float32 operation is the one TensorFlow's CPU kernel does, in the same order
      (tensorflow/core/kernels/image/crop_and_resize_op.cc), PROVIDED the including code is compiled
      without a * b + c contraction (C: -ffp-contract=off, no -ffast-math; CUDA: --fmad=false) and
      runs with flush-to-zero and denormals-are-zero on (host: cropcore_fp_enter(); CUDA: -ftz=true),
      as TF's kernels do. Where TF converts without arithmetic (double to float), the flush is
      written out (cropcore_flush).
   2. One text for three compilers: C99, C++17 and CUDA (NVRTC has no standard headers). So plain
      structs and functions with the cropcore_ prefix, no templates, no namespaces, no CUDA
      intrinsics outside `#ifdef __CUDA_ARCH__`, constants as macros.
   3. Safe where TF is not: a sample coordinate that is NaN or inf is out of range, and no index is
      formed from an out-of-range coordinate. Image heights and widths are at most 2**24 and crop
      sizes below 2**31 (callers check): float(H - 1) is then exact, indices fit an int and no
      neighbour index needs clamping.
*/

#ifndef CROPCORE_TF_CROP_AND_RESIZE_H
#define CROPCORE_TF_CROP_AND_RESIZE_H

#if defined(__CUDACC__)
#define CROPCORE_HD __host__ __device__ __forceinline__
#elif defined(__cplusplus)
#define CROPCORE_HD inline
#else
#define CROPCORE_HD static inline
#endif

#if !defined(__CUDACC__)
#include <math.h>
#endif

/* Smallest normal float32 (FLT_MIN), 2**-24 (the smallest float16 subnormal), largest float32. */
#define CROPCORE_FLT_MIN 1.17549435082228750797e-38f
#define CROPCORE_HALF_TINY 5.9604644775390625e-8f
#define CROPCORE_FLT_MAX 3.40282346638528859812e+38f
/* The largest image height or width, and crop size, this arithmetic is exact for (see 3. above). */
#define CROPCORE_MAX_IMAGE_SIDE (1 << 24)
#define CROPCORE_MAX_CROP_SIDE 2147483647

CROPCORE_HD unsigned cropcore_bits_of(float v) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(v);
#else
  unsigned u;
  __builtin_memcpy(&u, &v, sizeof u);
  return u;
#endif
}

CROPCORE_HD float cropcore_float_of(unsigned u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float v;
  __builtin_memcpy(&v, &u, sizeof v);
  return v;
#endif
}

/* Flush-to-zero of a value that no arithmetic flushed: a subnormal becomes a zero of its sign. */
CROPCORE_HD float cropcore_flush(float v) {
  return (v > -CROPCORE_FLT_MIN && v < CROPCORE_FLT_MIN) ? copysignf(0.0f, v) : v;
}

CROPCORE_HD int cropcore_is_finite(float v) { return fabsf(v) <= CROPCORE_FLT_MAX; }

/* -------------------------------------------------------------------------------------------------
   float16 <-> float32 on the binary16 bits, bit for bit as NumPy (npy_halfbits_to_floatbits,
   npy_floatbits_to_halfbits with round-half-to-even). */

CROPCORE_HD float cropcore_half_to_float(unsigned short bits) {
  unsigned x = bits;
  unsigned sign = (x & 0x8000u) << 16;
  unsigned exponent = (x >> 10) & 0x1fu;
  unsigned mantissa = x & 0x3ffu;
  if (exponent == 0) { /* zero or subnormal: mantissa * 2**-24, a normal float32 (or zero) */
    float v = (float)mantissa * CROPCORE_HALF_TINY;
    return sign ? -v : v;
  }
  if (exponent == 31) return cropcore_float_of(sign | 0x7f800000u | (mantissa << 13)); /* inf, NaN */
  return cropcore_float_of(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

CROPCORE_HD unsigned short cropcore_float_to_half(float v) {
  unsigned f = cropcore_bits_of(v);
  unsigned sign = (f & 0x80000000u) >> 16;
  unsigned f_exp = f & 0x7f800000u;
  unsigned f_man = f & 0x007fffffu;
  if (f_exp >= 0x47800000u) { /* overflow to inf, inf, NaN (kept a NaN) */
    if (f_exp == 0x7f800000u && f_man != 0) {
      unsigned nan = 0x7c00u + (f_man >> 13);
      return (unsigned short)(sign + (nan == 0x7c00u ? nan + 1 : nan));
    }
    return (unsigned short)(sign + 0x7c00u);
  }
  if (f_exp <= 0x38000000u) { /* a float16 subnormal or zero */
    if (f_exp < 0x33000000u) return (unsigned short)sign;
    f_exp >>= 23;
    f_man = 0x00800000u + f_man;
    f_man >>= (113u - f_exp);
    if (((f_man & 0x00003fffu) != 0x00001000u) || (f & 0x000007ffu)) f_man += 0x00001000u;
    return (unsigned short)(sign + (f_man >> 13));
  }
  {
    unsigned h_exp = (f_exp - 0x38000000u) >> 13;
    if ((f_man & 0x00003fffu) != 0x00001000u) f_man += 0x00001000u;
    return (unsigned short)(sign + h_exp + (f_man >> 13)); /* a carry rounds into the exponent */
  }
}

/* -------------------------------------------------------------------------------------------------
   Sample coordinates of one crop axis of one box (TF's in_y / in_x). */

typedef struct {
  float start; /* y1 * (H - 1); for a crop of 1: the box centre, the only sample */
  float scale; /* height_scale */
  int crop;    /* crop_height */
  int size;    /* image height */
} cropcore_axis;

/* ratio_first: CropAndResizeGradBoxes rounds (H - 1) / (crop - 1) first, then multiplies by
   (y2 - y1); CropAndResize and CropAndResizeGradImage compute (y2 - y1) * (H - 1) / (crop - 1)
   left to right. */
CROPCORE_HD cropcore_axis cropcore_make_axis(float lo, float hi, int size, int crop,
                                             int ratio_first) {
  cropcore_axis a;
  float size_minus_one = (float)(size - 1);
  a.crop = crop;
  a.size = size;
  lo = cropcore_flush(lo); /* denormals-are-zero for the box edges */
  hi = cropcore_flush(hi);
  if (crop == 1) {
    /* 0.5 * (y1 + y2) * (image_height - 1): a float sum, then double products (the literal 0.5
       is a double), rounded to float once. */
    float total = lo + hi;
    a.start = cropcore_flush((float)(0.5 * (double)total * (double)(size - 1)));
    a.scale = 0.0f;
  } else {
    float span = hi - lo;
    a.scale = ratio_first ? span * (size_minus_one / (float)(crop - 1))
                          : (span * size_minus_one) / (float)(crop - 1);
    a.start = lo * size_minus_one;
  }
  return a;
}

/* in_y = y1 * (H - 1) + y * height_scale: two float32 roundings (the int y converted to float).
   For a crop of 1 the centre itself (adding 0 * scale could turn -0.0 into +0.0). */
CROPCORE_HD float cropcore_coord(cropcore_axis a, int i) {
  return a.crop == 1 ? a.start : a.start + (float)i * a.scale;
}

typedef struct {
  int valid;   /* 0 <= coord <= size - 1 (false for NaN) */
  int low;     /* floorf(coord); 0 when not valid */
  int high;    /* ceilf(coord); 0 when not valid */
  int nearest; /* roundf(coord), half away from zero; 0 when not valid */
  float lerp;  /* coord - low; 0 when not valid */
} cropcore_sample;

CROPCORE_HD cropcore_sample cropcore_sample_at(float c, int size) {
  cropcore_sample s;
  float inside;
  /* TF's CPU test `in < 0 || in > size - 1`, negated NaN-safely (TF's GPU kernel's form). */
  s.valid = (c >= 0.0f) && (c <= (float)(size - 1));
  inside = s.valid ? c : 0.0f;
  s.low = (int)floorf(inside);
  s.high = (int)ceilf(inside);
  /* y_lerp = in_y - top_y_index, with the int index converted back: -0.0 - +0.0 stays -0.0. */
  s.lerp = inside - (float)s.low;
  /* roundf for coord >= 0: floor, plus one from a fraction of at least 0.5 (exact in float32;
     not floorf(c + 0.5f), which rounds 0.49999997 up). */
  s.nearest = s.low + (s.lerp >= 0.5f ? 1 : 0);
  if (s.nearest > size - 1) s.nearest = size - 1;
  return s;
}

/* -------------------------------------------------------------------------------------------------
   Per-sample arithmetic of the three ops. Pixel values are already float32 (TF's
   static_cast<float>). */

/* CropAndResize, bilinear: top = tl + (tr - tl) * x_lerp; bottom likewise; top + (bottom - top)
   * y_lerp. */
CROPCORE_HD float cropcore_lerp(float a, float b, float t) { return a + (b - a) * t; }

CROPCORE_HD float cropcore_bilinear(float top_left, float top_right, float bottom_left,
                                    float bottom_right, float x_lerp, float y_lerp) {
  float top = cropcore_lerp(top_left, top_right, x_lerp);
  float bottom = cropcore_lerp(bottom_left, bottom_right, x_lerp);
  return cropcore_lerp(top, bottom, y_lerp);
}

/* CropAndResizeGradImage, bilinear: the four contributions of one gradient value, as TF forms them
   (dtop = (1 - y_lerp) * grad; top_left += (1 - x_lerp) * dtop; ...). */
typedef struct {
  float top_left, top_right, bottom_left, bottom_right;
} cropcore_corners;

CROPCORE_HD cropcore_corners cropcore_spread(float grad, float x_lerp, float y_lerp) {
  cropcore_corners c;
  float dtop = (1.0f - y_lerp) * grad;
  float dbottom = y_lerp * grad;
  c.top_left = (1.0f - x_lerp) * dtop;
  c.top_right = x_lerp * dtop;
  c.bottom_left = (1.0f - x_lerp) * dbottom;
  c.bottom_right = x_lerp * dbottom;
  return c;
}

/* CropAndResizeGradBoxes: the image's slopes at one sample, times the incoming gradient
   (image_grad_y, image_grad_x of TF's kernel). */
typedef struct {
  float y, x;
} cropcore_slopes;

CROPCORE_HD cropcore_slopes cropcore_image_slopes(float top_left, float top_right,
                                                  float bottom_left, float bottom_right,
                                                  float x_lerp, float y_lerp, float top_grad) {
  cropcore_slopes s;
  s.y = (1.0f - x_lerp) * (bottom_left - top_left) + x_lerp * (bottom_right - top_right);
  s.x = (1.0f - y_lerp) * (top_right - top_left) + y_lerp * (bottom_right - bottom_left);
  s.y *= top_grad;
  s.x *= top_grad;
  return s;
}

/* -------------------------------------------------------------------------------------------------
   TF's floating-point environment on the host: its CPU thread pools run kernels with flush-to-zero
   and denormals-are-zero on (port::ScopedFlushDenormal). cropcore_fp_enter() switches both on and
   returns the caller's modes, which cropcore_fp_leave() restores. (CUDA device code gets them from
   -ftz=true.) */

#if !defined(__CUDACC__)
#if defined(__SSE2__) || defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define CROPCORE_HAS_FTZ 1
typedef unsigned int cropcore_fpenv;
CROPCORE_HD cropcore_fpenv cropcore_fp_enter(void) {
  const cropcore_fpenv saved = _mm_getcsr();
  _mm_setcsr(saved | 0x8040u); /* FTZ (bit 15) | DAZ (bit 6) */
  return saved;
}
CROPCORE_HD void cropcore_fp_leave(cropcore_fpenv saved) { _mm_setcsr(saved); }
#elif defined(__aarch64__)
#define CROPCORE_HAS_FTZ 1
typedef unsigned long long cropcore_fpenv;
CROPCORE_HD cropcore_fpenv cropcore_fp_enter(void) {
  cropcore_fpenv saved;
  __asm__ volatile("mrs %0, fpcr" : "=r"(saved));
  __asm__ volatile("msr fpcr, %0" : : "r"(saved | (1ull << 24))); /* FZ: flush inputs, results */
  return saved;
}
CROPCORE_HD void cropcore_fp_leave(cropcore_fpenv saved) {
  __asm__ volatile("msr fpcr, %0" : : "r"(saved));
}
#else
#define CROPCORE_HAS_FTZ 0 /* no known way here: subnormals underflow gradually */
typedef int cropcore_fpenv;
CROPCORE_HD cropcore_fpenv cropcore_fp_enter(void) { return 0; }
CROPCORE_HD void cropcore_fp_leave(cropcore_fpenv saved) { (void)saved; }
#endif
#endif /* !__CUDACC__ */

#endif /* CROPCORE_TF_CROP_AND_RESIZE_H */
