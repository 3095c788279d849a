// What every cropcore CUDA kernel shares: the compile-three-ways macros, the element types and
// their conversions to float, division by run-time constants, the rows the kernels run over, and
// the kernel parameters two or three ops take.
//
// Requirements: those of crop_and_resize.cuh, which includes this header and the three op headers
// (forward.cuh, grad_image.cuh, grad_boxes.cuh). No standard headers under CUDA; no CUDA
// intrinsics outside `#ifdef __CUDA_ARCH__`; constants as macros.

#ifndef CROPCORE_COMMON_CUH
#define CROPCORE_COMMON_CUH

#include "tf_crop_and_resize.h"  // the per-sample arithmetic, shared with the torch CPU loops

#if defined(__CUDACC__)
#define CC_HD __host__ __device__ __forceinline__
#define CC_UNROLL _Pragma("unroll")
#else
#define CC_HD inline
#define CC_UNROLL
#endif

namespace cropcore {

typedef long long i64;
typedef unsigned long long u64;

// IEEE binary16, as stored. Conversions are written out below (as NumPy's) instead of using
// cuda_fp16.h, so that the host harness runs exactly the device's code.
struct half_t {
  unsigned short bits;
};

template <typename T>
CC_HD T cc_min(T a, T b) { return b < a ? b : a; }
template <typename T>
CC_HD T cc_max(T a, T b) { return a < b ? b : a; }

// float16 <-> float32, bit for bit as NumPy, on the type the kernels overload on.
CC_HD float half_to_float(half_t h) { return cropcore_half_to_float(h.bits); }

CC_HD half_t float_to_half(float v) {
  half_t h;
  h.bits = cropcore_float_to_half(v);
  return h;
}

// TF's static_cast<float>(pixel), for each image dtype. A double is rounded and then flushed
// (TF's conversion runs under FTZ); a float is passed through untouched (a nearest-neighbour crop
// copies subnormal float pixels as they are; arithmetic on them flushes them).
CC_HD float to_float(unsigned char v) { return (float)v; }
CC_HD float to_float(signed char v) { return (float)v; }
CC_HD float to_float(unsigned short v) { return (float)v; }
CC_HD float to_float(short v) { return (float)v; }
CC_HD float to_float(int v) { return (float)v; }
CC_HD float to_float(long long v) { return (float)v; }
CC_HD float to_float(float v) { return v; }
CC_HD float to_float(double v) { return cropcore_flush((float)v); }
CC_HD float to_float(half_t v) { return half_to_float(v); }

// -------------------------------------------------------------------------------------------------
// Division by a run-time constant: q = n / divisor for n < 2**31, with a multiply-high and a
// shift (the round-up method, as in PyTorch's IntDivider). The launcher computes magic and shift.

struct FastDiv {
  unsigned divisor;
  unsigned magic;
  int shift;
};

CC_HD FastDiv make_div(unsigned divisor, unsigned magic, int shift) {
  FastDiv f;
  f.divisor = divisor;
  f.magic = magic;
  f.shift = shift;
  return f;
}

CC_HD unsigned umulhi(unsigned a, unsigned b) {
#ifdef __CUDA_ARCH__
  return __umulhi(a, b);
#else
  return (unsigned)(((u64)a * b) >> 32);
#endif
}

CC_HD unsigned divide(const FastDiv& f, unsigned n) { return (umulhi(n, f.magic) + n) >> f.shift; }

// -------------------------------------------------------------------------------------------------
// Bit sets of boxes (the deterministic image gradient's row masks): set a bit (atomically on the
// device; the host harness runs one thread) and find the lowest set bit of a non-zero word.

CC_HD void set_bits(unsigned* word, unsigned bits) {
#ifdef __CUDA_ARCH__
  atomicOr(word, bits);
#else
  *word |= bits;
#endif
}

CC_HD int lowest_bit(unsigned word) {
#ifdef __CUDA_ARCH__
  return __ffs((int)word) - 1;
#else
  return __builtin_ctz(word);
#endif
}

// -------------------------------------------------------------------------------------------------
// Sample coordinates (TF's in_y / in_x) and samples: cropcore_axis, cropcore_sample and their
// functions, from tf_crop_and_resize.h.

typedef cropcore_axis Axis;
typedef cropcore_sample Sample;

// -------------------------------------------------------------------------------------------------
// Rows. Every kernel runs over rows x groups: a row is one crop row (box, y) in NHWC, or one crop
// row of one channel (box, channel, y) in NCHW; a group is VEC channels of one column (NHWC) or one
// column (NCHW). Consecutive groups are consecutive in memory, for coalescing.

struct CropRow {
  unsigned box, y, channel;
};

CC_HD CropRow crop_row(unsigned row, int nchw, const FastDiv& by_crop_height,
                       const FastDiv& by_depth) {
  CropRow r;
  unsigned plane = divide(by_crop_height, row);
  r.y = row - plane * by_crop_height.divisor;
  if (nchw) {
    r.box = divide(by_depth, plane);
    r.channel = plane - r.box * by_depth.divisor;
  } else {
    r.box = plane;
    r.channel = 0;
  }
  return r;
}

// A crop row's samples: the row's y sample and the box's x axis (TF's in_y, and in_x's terms).
struct RowSamples {
  Sample y;
  Axis x_axis;
};

CC_HD RowSamples row_samples(const float* boxes, unsigned box, unsigned y, int height, int width,
                             int crop_height, int crop_width) {
  const float* b = boxes + 4 * (i64)box;
  RowSamples s;
  Axis y_axis = cropcore_make_axis(b[0], b[2], height, crop_height, false);
  s.y = cropcore_sample_at(cropcore_coord(y_axis, (int)y), height);
  s.x_axis = cropcore_make_axis(b[1], b[3], width, crop_width, false);
  return s;
}

// -------------------------------------------------------------------------------------------------
// Box indices cropcore did not read (docs/decisions.md, "What do unchecked bad values give?"): an
// index outside [0, batch) marks its box bad. A bad box's crop and box-gradient row are NaN and it
// adds nothing to the image gradient; no image address is ever formed from its index (image_index
// gives 0 for it, and the kernels load nothing for a bad box: with batch == 0 there is no image 0).

CC_HD bool bad_index(int index, int batch) { return (unsigned)index >= (unsigned)batch; }

CC_HD i64 image_index(int index, int batch) { return bad_index(index, batch) ? 0 : (i64)index; }

// A quiet NaN, the value of a bad box's crop and box-gradient row.
CC_HD float quiet_nan() { return cropcore_float_of(0x7fc00000u); }

// -------------------------------------------------------------------------------------------------
// Kernel parameters: what the op headers' CROPCORE_*_ARGS macros use to fill their Args structs.

// Strides, per logical axis, copied from four kernel parameters into a 4-element array.
CC_HD void set_strides(i64 (&stride)[4], i64 s0, i64 s1, i64 s2, i64 s3) {
  stride[0] = s0;
  stride[1] = s1;
  stride[2] = s2;
  stride[3] = s3;
}

}  // namespace cropcore

// A FastDiv kernel parameter is three scalars: divisor, magic, shift.
#define CROPCORE_DIV_PARAMS(n) unsigned n##_divisor, unsigned n##_magic, int n##_shift
#define CROPCORE_DIV(n) cropcore::make_div(n##_divisor, n##_magic, n##_shift)

// The fields every op's Args struct shares, from the kernel parameters of the same names.
#define CROPCORE_SHARED_ARGS(a)                                                                 \
  a.boxes = boxes;                                                                              \
  a.box_indices = box_indices;                                                                  \
  a.batch = batch;                                                                              \
  a.height = height;                                                                            \
  a.width = width;                                                                              \
  a.depth = depth;                                                                              \
  a.crop_height = crop_height;                                                                  \
  a.crop_width = crop_width

// Image strides `a.field` from the four parameters prefix_batch, prefix_row, prefix_column and
// prefix_channel.
#define CROPCORE_IMAGE_STRIDES(field, prefix)                                                   \
  cropcore::set_strides(field, prefix##_batch, prefix##_row, prefix##_column, prefix##_channel)

// The fields both gradients' Args structs fill: the shared ones, the incoming gradient, its strides
// and the number of boxes.
#define CROPCORE_GRADS_ARGS(a)                                                                  \
  CROPCORE_SHARED_ARGS(a);                                                                      \
  a.grads = grads;                                                                              \
  a.num_boxes = num_boxes;                                                                      \
  cropcore::set_strides(a.grads_stride, grads_stride_box, grads_stride_y, grads_stride_x,      \
                        grads_stride_channel)

// The fields of the kernels that run over crop rows (crop_row): layout, method and the divisors.
#define CROPCORE_CROP_ROW_ARGS(a)                                                               \
  a.nchw = nchw;                                                                                \
  a.nearest = nearest;                                                                          \
  a.by_crop_height = CROPCORE_DIV(by_crop_height);                                              \
  a.by_depth = CROPCORE_DIV(by_depth)

// The instantiations: every image dtype (the nine TensorFlow takes) and every gradient dtype.
#define CROPCORE_IMAGE_TYPES(X)                                                                 \
  X(uint8, unsigned char)                                                                       \
  X(uint16, unsigned short)                                                                     \
  X(int8, signed char)                                                                          \
  X(int16, short)                                                                               \
  X(int32, int)                                                                                 \
  X(int64, long long)                                                                           \
  X(float16, cropcore::half_t)                                                                  \
  X(float32, float)                                                                             \
  X(float64, double)

#define CROPCORE_GRAD_TYPES(X)                                                                  \
  X(float16, cropcore::half_t)                                                                  \
  X(float32, float)                                                                             \
  X(float64, double)

#endif  // CROPCORE_COMMON_CUH
