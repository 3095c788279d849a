// cropcore's CUDA arithmetic: TensorFlow's CropAndResize and its two gradients, one sample at a time.
//
// Requirements, in order:
//
// 1. Every float32 operation is the one TensorFlow's CPU kernel does, in the same order
//    (tensorflow/core/kernels/image/crop_and_resize_op.cc; cropcore_numpy.kernels mirrors it).
//    The per-sample expressions are cropcore's shared tf_crop_and_resize.h (cropcore.native),
//    which the torch backend's CPU loops compile too; this file adds the CUDA kernels' indexing,
//    loads, accumulators and reductions.
//    The device code is compiled with --fmad=false (no a * b + c contraction) and -ftz=true (TF
//    runs its kernels with flush-to-zero and denormals-are-zero). Where TF converts without doing
//    arithmetic (double to float), the flush is explicit (cropcore_flush()).
// 2. The same text compiles three ways: NVRTC (CuPy, at run time), nvcc (CI's compile test) and a
//    plain host C++ compiler (tests/cupy_host_harness.cpp runs these very functions on the CPU,
//    with FTZ/DAZ set, against the NumPy reference). So: no standard headers under CUDA, no CUDA
//    intrinsics outside `#ifdef __CUDA_ARCH__`, constants as macros.
// 3. Safe where TF is not: a sample coordinate that is NaN or inf is out of range; no index is
//    formed from an out-of-range coordinate. Heights and widths are at most 2**24 (the backend
//    declines larger images), so float(H - 1) is exact and no neighbour index needs clamping.
// 4. Indices: 32-bit for counts the launcher has checked to be below 2**31, 64-bit for every
//    memory offset. Strides are in elements, per logical axis (batch, row, column, channel), so
//    one kernel serves NHWC, NCHW and any strided view.
//
// kernels.cu wraps these functions in __global__ kernels; the parameter lists and the structs
// they fill are defined here once (CROPCORE_*_PARAMS / CROPCORE_*_ARGS) for both wrappers.

#ifndef CROPCORE_CROP_AND_RESIZE_CUH
#define CROPCORE_CROP_AND_RESIZE_CUH

#include "tf_crop_and_resize.h"  // the per-sample arithmetic, shared with the torch CPU loops

#if defined(__CUDACC__)
#define CC_HD __host__ __device__ __forceinline__
#define CC_UNROLL _Pragma("unroll")
#else
#define CC_HD inline
#define CC_UNROLL
#endif

// Threads of a box-gradient reduction block. The summation order depends on it: never change it
// at run time.
#define CROPCORE_REDUCE_THREADS 256

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
// Sample coordinates (TF's in_y / in_x) and samples: cropcore_axis, cropcore_sample and their
// functions, from tf_crop_and_resize.h.

typedef cropcore_axis Axis;
typedef cropcore_sample Sample;

// The samples of axis `a` that lie strictly between lo and hi and inside the image, as the index
// range [first, last] (empty when first > last). cropcore_coord(i) is monotone in i (non-decreasing for a
// non-negative scale, non-increasing otherwise; rounding and flushing keep that), so each bound is
// a binary search.
CC_HD bool above(float c, float lo) { return c >= 0.0f && c > lo; }
CC_HD bool below(float c, float hi, float last) { return c <= last && c < hi; }

// Smallest i in [0, n] for which the test holds, the test being false then true along i.
// kind 0: above(c, lo); 1: !below(c, hi); 2: below(c, hi); 3: !above(c, lo).
CC_HD int search(const Axis& a, int kind, float lo, float hi, float last) {
  int begin = 0, end = a.crop;
  while (begin < end) {
    int mid = begin + (end - begin) / 2;
    float c = cropcore_coord(a, mid);
    bool test = kind == 0 ? above(c, lo)
              : kind == 1 ? !below(c, hi, last)
              : kind == 2 ? below(c, hi, last)
                          : !above(c, lo);
    if (test) end = mid; else begin = mid + 1;
  }
  return begin;
}

CC_HD void samples_between(const Axis& a, float lo, float hi, int& first, int& last) {
  float last_pixel = (float)(a.size - 1);
  first = 0;
  last = -1;
  if (a.crop == 1) {
    if (above(a.start, lo) && below(a.start, hi, last_pixel)) last = 0;
    return;
  }
  if (!cropcore_is_finite(a.start) || !cropcore_is_finite(a.scale)) return;  // every coordinate is inf or NaN
  if (a.scale >= 0.0f) {
    first = search(a, 0, lo, hi, last_pixel);
    last = search(a, 1, lo, hi, last_pixel) - 1;
  } else {
    first = search(a, 2, lo, hi, last_pixel);
    last = search(a, 3, lo, hi, last_pixel) - 1;
  }
}

// -------------------------------------------------------------------------------------------------
// Loads and stores of VEC consecutive channels (VEC > 1 only where the channel stride is 1 and the
// addresses are aligned: the launcher checks).

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int VEC>
CC_HD void load(const T* p, i64 channel_stride, T (&out)[VEC]) {
#ifdef __CUDA_ARCH__
  if (VEC > 1) {
    Pack<T, VEC> pack = *reinterpret_cast<const Pack<T, VEC>*>(p);
CC_UNROLL
    for (int i = 0; i < VEC; ++i) out[i] = pack.v[i];
  } else {
    out[0] = p[0];
  }
#else
  for (int i = 0; i < VEC; ++i) out[i] = p[i * channel_stride];
#endif
}

template <int VEC>
CC_HD void store(float* p, const float (&v)[VEC]) {
#ifdef __CUDA_ARCH__
  if (VEC > 1) {
    Pack<float, VEC> pack;
CC_UNROLL
    for (int i = 0; i < VEC; ++i) pack.v[i] = v[i];
    *reinterpret_cast<Pack<float, VEC>*>(p) = pack;
  } else {
    p[0] = v[0];
  }
#else
  for (int i = 0; i < VEC; ++i) p[i] = v[i];
#endif
}

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

// -------------------------------------------------------------------------------------------------
// CropAndResize

struct ForwardArgs {
  const float* boxes;
  const int* box_indices;
  float* crops;
  int height, width, depth;
  i64 stride[4];  // image strides (batch, row, column, channel), in elements
  int crop_height, crop_width;
  int nchw, nearest;
  float extrapolation_value;
  unsigned row_length;        // output elements per row
  unsigned groups_per_pixel;  // NHWC: depth / VEC
  FastDiv by_crop_height, by_depth, by_groups_per_pixel;
};

#define CROPCORE_DIV_PARAMS(n) unsigned n##_divisor, unsigned n##_magic, int n##_shift
#define CROPCORE_DIV(n) cropcore::make_div(n##_divisor, n##_magic, n##_shift)

#define CROPCORE_FORWARD_PARAMS(T)                                                              \
  const T* __restrict__ image, const float* __restrict__ boxes,                                \
      const int* __restrict__ box_indices, float* __restrict__ crops, int height, int width,   \
      int depth, long long stride_batch, long long stride_row, long long stride_column,        \
      long long stride_channel, int crop_height, int crop_width, int nchw, int nearest,         \
      float extrapolation_value, unsigned rows, unsigned groups, unsigned row_length,           \
      unsigned groups_per_pixel, CROPCORE_DIV_PARAMS(by_crop_height),                           \
      CROPCORE_DIV_PARAMS(by_depth), CROPCORE_DIV_PARAMS(by_groups_per_pixel)

#define CROPCORE_FORWARD_ARGS(a)                                                                \
  cropcore::ForwardArgs a;                                                                      \
  a.boxes = boxes;                                                                              \
  a.box_indices = box_indices;                                                                  \
  a.crops = crops;                                                                              \
  a.height = height;                                                                            \
  a.width = width;                                                                              \
  a.depth = depth;                                                                              \
  a.stride[0] = stride_batch;                                                                   \
  a.stride[1] = stride_row;                                                                     \
  a.stride[2] = stride_column;                                                                  \
  a.stride[3] = stride_channel;                                                                 \
  a.crop_height = crop_height;                                                                  \
  a.crop_width = crop_width;                                                                    \
  a.nchw = nchw;                                                                                \
  a.nearest = nearest;                                                                          \
  a.extrapolation_value = extrapolation_value;                                                  \
  a.row_length = row_length;                                                                    \
  a.groups_per_pixel = groups_per_pixel;                                                        \
  a.by_crop_height = CROPCORE_DIV(by_crop_height);                                              \
  a.by_depth = CROPCORE_DIV(by_depth);                                                          \
  a.by_groups_per_pixel = CROPCORE_DIV(by_groups_per_pixel)

template <typename T>
struct ForwardRow {
  const T* top;      // the image row above the samples (at channel 0, or at the row's channel)
  const T* bottom;   // the row below
  const T* nearest;  // the nearest row
  float* out;        // the row's first output element
  Sample y;
  Axis x_axis;
};

template <typename T>
CC_HD ForwardRow<T> forward_row(const ForwardArgs& a, const T* image, unsigned row) {
  CropRow cr = crop_row(row, a.nchw, a.by_crop_height, a.by_depth);
  const float* box = a.boxes + 4 * (i64)cr.box;
  ForwardRow<T> r;
  Axis y_axis = cropcore_make_axis(box[0], box[2], a.height, a.crop_height, false);
  r.y = cropcore_sample_at(cropcore_coord(y_axis, (int)cr.y), a.height);
  r.x_axis = cropcore_make_axis(box[1], box[3], a.width, a.crop_width, false);
  const T* pixels = image + a.stride[0] * a.box_indices[cr.box] + a.stride[3] * (i64)cr.channel;
  r.top = pixels + a.stride[1] * r.y.low;
  r.bottom = pixels + a.stride[1] * r.y.high;
  r.nearest = pixels + a.stride[1] * r.y.nearest;
  r.out = a.crops + (i64)row * a.row_length;
  return r;
}

template <typename T, int VEC>
CC_HD void forward_group(const ForwardArgs& a, const ForwardRow<T>& r, unsigned g) {
  unsigned x = g, channel = 0;
  if (!a.nchw) {
    x = divide(a.by_groups_per_pixel, g);
    channel = (g - x * a.groups_per_pixel) * VEC;
  }
  float v[VEC];
  bool inside = r.y.valid;
  Sample sx;
  if (inside) {
    sx = cropcore_sample_at(cropcore_coord(r.x_axis, (int)x), a.width);
    inside = sx.valid;
  }
  if (!inside) {
CC_UNROLL
    for (int i = 0; i < VEC; ++i) v[i] = a.extrapolation_value;
  } else {
    const i64 sxs = a.stride[2], sd = a.stride[3];
    const i64 channel_offset = sd * (i64)channel;
    if (a.nearest) {
      T p[VEC];
      load<T, VEC>(r.nearest + (sxs * sx.nearest + channel_offset), sd, p);
CC_UNROLL
      for (int i = 0; i < VEC; ++i) v[i] = to_float(p[i]);
    } else {
      const i64 left = sxs * sx.low + channel_offset, right = sxs * sx.high + channel_offset;
      T tl[VEC], tr[VEC], bl[VEC], br[VEC];
      load<T, VEC>(r.top + left, sd, tl);
      load<T, VEC>(r.top + right, sd, tr);
      load<T, VEC>(r.bottom + left, sd, bl);
      load<T, VEC>(r.bottom + right, sd, br);
CC_UNROLL
      for (int i = 0; i < VEC; ++i) {
        v[i] = cropcore_bilinear(to_float(tl[i]), to_float(tr[i]), to_float(bl[i]),
                                 to_float(br[i]), sx.lerp, r.y.lerp);
      }
    }
  }
  store<VEC>(r.out + (i64)g * VEC, v);
}

// -------------------------------------------------------------------------------------------------
// CropAndResizeGradImage
//
// Two ways: scatter (a thread per grads element adds its contributions atomically; fast, the order
// of the additions varies) and gather (a thread per image-gradient element adds, in TF's order, the
// contributions of every sample whose neighbours include it: deterministic, and bit-identical to
// TF's single-threaded CPU kernel).

// acc += static_cast<T>(contribution), rounded as TF's `+=` in T.
template <typename T>
struct Acc;
template <>
struct Acc<float> {
  typedef float type;
  static CC_HD float add(float acc, float c) { return acc + c; }
  static CC_HD float store(float acc) { return acc; }
};
template <>
struct Acc<double> {
  typedef double type;
  static CC_HD double add(double acc, float c) { return acc + (double)c; }
  static CC_HD double store(double acc) { return acc; }
};
template <>
struct Acc<half_t> {  // a float that always holds a float16 value; float16 + float16 in float
  typedef float type;
  static CC_HD float add(float acc, float c) {
    return half_to_float(float_to_half(acc + half_to_float(float_to_half(c))));
  }
  static CC_HD half_t store(float acc) { return float_to_half(acc); }
};

struct GradImageArgs {
  const float* grads;
  const float* boxes;
  const int* box_indices;
  float* box_axes;  // gather: per box (y start, y scale, x start, x scale)
  int* box_spans;   // gather: per box (image, first row, last row, first column, last column)
  int num_boxes, height, width, depth, crop_height, crop_width;
  i64 grads_stride[4];   // (box, y, x, channel), in elements
  i64 output_stride[4];  // (batch, row, column, channel), in elements
  int nchw, nearest;
  FastDiv by_crop_height, by_depth, by_height;
};

#define CROPCORE_GRAD_IMAGE_PARAMS(T)                                                           \
  const float* __restrict__ grads, const float* __restrict__ boxes,                            \
      const int* __restrict__ box_indices, T* __restrict__ output, float* __restrict__ box_axes, \
      int* __restrict__ box_spans, int num_boxes, int height, int width, int depth,             \
      int crop_height, int crop_width, long long grads_stride_box, long long grads_stride_y,    \
      long long grads_stride_x, long long grads_stride_channel, long long output_stride_batch,  \
      long long output_stride_row, long long output_stride_column,                              \
      long long output_stride_channel, int nchw, int nearest, unsigned rows, unsigned groups,   \
      CROPCORE_DIV_PARAMS(by_crop_height), CROPCORE_DIV_PARAMS(by_depth),                       \
      CROPCORE_DIV_PARAMS(by_height)

#define CROPCORE_GRAD_IMAGE_ARGS(a)                                                             \
  cropcore::GradImageArgs a;                                                                    \
  a.grads = grads;                                                                              \
  a.boxes = boxes;                                                                              \
  a.box_indices = box_indices;                                                                  \
  a.box_axes = box_axes;                                                                        \
  a.box_spans = box_spans;                                                                      \
  a.num_boxes = num_boxes;                                                                      \
  a.height = height;                                                                            \
  a.width = width;                                                                              \
  a.depth = depth;                                                                              \
  a.crop_height = crop_height;                                                                  \
  a.crop_width = crop_width;                                                                    \
  a.grads_stride[0] = grads_stride_box;                                                         \
  a.grads_stride[1] = grads_stride_y;                                                           \
  a.grads_stride[2] = grads_stride_x;                                                           \
  a.grads_stride[3] = grads_stride_channel;                                                     \
  a.output_stride[0] = output_stride_batch;                                                     \
  a.output_stride[1] = output_stride_row;                                                       \
  a.output_stride[2] = output_stride_column;                                                    \
  a.output_stride[3] = output_stride_channel;                                                   \
  a.nchw = nchw;                                                                                \
  a.nearest = nearest;                                                                          \
  a.by_crop_height = CROPCORE_DIV(by_crop_height);                                              \
  a.by_depth = CROPCORE_DIV(by_depth);                                                          \
  a.by_height = CROPCORE_DIV(by_height)

// --- scatter

struct ScatterRow {
  Sample y;
  Axis x_axis;
  i64 grads_offset;   // grads at (box, y, 0, channel)
  i64 output_offset;  // output at (image, 0, 0, channel)
};

CC_HD ScatterRow scatter_row(const GradImageArgs& a, unsigned row) {
  CropRow cr = crop_row(row, a.nchw, a.by_crop_height, a.by_depth);
  const float* box = a.boxes + 4 * (i64)cr.box;
  ScatterRow r;
  Axis y_axis = cropcore_make_axis(box[0], box[2], a.height, a.crop_height, false);
  r.y = cropcore_sample_at(cropcore_coord(y_axis, (int)cr.y), a.height);
  r.x_axis = cropcore_make_axis(box[1], box[3], a.width, a.crop_width, false);
  r.grads_offset = a.grads_stride[0] * cr.box + a.grads_stride[1] * cr.y +
                   a.grads_stride[3] * cr.channel;
  r.output_offset = a.output_stride[0] * a.box_indices[cr.box] + a.output_stride[3] * cr.channel;
  return r;
}

// `add(pointer, contribution)` adds one float contribution to a T element (atomically on the
// device). Contributions in TF's order per sample: top left, top right, bottom left, bottom right.
#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <typename T, class Add>
CC_HD void scatter_element(const GradImageArgs& a, const ScatterRow& r, T* output, unsigned g,
                           const Add& add) {
  if (!r.y.valid) return;
  unsigned x = g, channel = 0;
  if (!a.nchw) {
    x = divide(a.by_depth, g);
    channel = g - x * a.by_depth.divisor;
  }
  Sample sx = cropcore_sample_at(cropcore_coord(r.x_axis, (int)x), a.width);
  if (!sx.valid) return;
  float grad = a.grads[r.grads_offset + a.grads_stride[2] * x + a.grads_stride[3] * channel];
  T* image = output + r.output_offset + a.output_stride[3] * channel;
  const i64 sy = a.output_stride[1], sxs = a.output_stride[2];
  if (a.nearest) {
    // static_cast<T>(grad): a subnormal gradient counts as zero (DAZ).
    add(image + sy * r.y.nearest + sxs * sx.nearest, cropcore_flush(grad));
    return;
  }
  cropcore_corners c = cropcore_spread(grad, sx.lerp, r.y.lerp);
  add(image + sy * r.y.low + sxs * sx.low, c.top_left);
  add(image + sy * r.y.low + sxs * sx.high, c.top_right);
  add(image + sy * r.y.high + sxs * sx.low, c.bottom_left);
  add(image + sy * r.y.high + sxs * sx.high, c.bottom_right);
}

// --- gather

// Per box: its sample axes, and the rectangle of pixels its in-range samples touch (the cheap
// test that lets every image-gradient element skip the boxes that cannot reach it).
CC_HD void box_setup(const GradImageArgs& a, int k) {
  const float* box = a.boxes + 4 * (i64)k;
  Axis y_axis = cropcore_make_axis(box[0], box[2], a.height, a.crop_height, false);
  Axis x_axis = cropcore_make_axis(box[1], box[3], a.width, a.crop_width, false);
  float* axes = a.box_axes + 4 * (i64)k;
  axes[0] = y_axis.start;
  axes[1] = y_axis.scale;
  axes[2] = x_axis.start;
  axes[3] = x_axis.scale;
  int* span = a.box_spans + 5 * (i64)k;
  span[0] = a.box_indices[k];
  const Axis* axis[2] = {&y_axis, &x_axis};
  for (int j = 0; j < 2; ++j) {
    int first, last;
    samples_between(*axis[j], -1.0f, (float)axis[j]->size, first, last);  // the in-range ones
    if (first > last) {  // no sample inside: an empty span
      span[1 + 2 * j] = 1;
      span[2 + 2 * j] = 0;
      continue;
    }
    Sample s0 = cropcore_sample_at(cropcore_coord(*axis[j], first), axis[j]->size);
    Sample s1 = cropcore_sample_at(cropcore_coord(*axis[j], last), axis[j]->size);
    span[1 + 2 * j] = cc_min(s0.low, s1.low);
    span[2 + 2 * j] = cc_max(s0.high, s1.high);
  }
}

// The gradient of image element (b, py, px, channel): TF's additions to it, in TF's order (boxes,
// crop rows, crop columns; corners top left, top right, bottom left, bottom right), each rounded as
// TF rounds it.
template <typename T>
CC_HD typename Acc<T>::type gather_sum(const GradImageArgs& a, int b, int py, int px,
                                       int channel) {
  typename Acc<T>::type acc = 0;
  for (int k = 0; k < a.num_boxes; ++k) {
    const int* span = a.box_spans + 5 * (i64)k;
    if (span[0] != b || py < span[1] || py > span[2] || px < span[3] || px > span[4]) continue;
    const float* axes = a.box_axes + 4 * (i64)k;
    Axis y_axis = {axes[0], axes[1], a.crop_height, a.height};
    Axis x_axis = {axes[2], axes[3], a.crop_width, a.width};
    // Only samples with |coord - p| < 1 have p as a neighbour.
    int y0, y1, x0, x1;
    samples_between(y_axis, (float)(py - 1), (float)(py + 1), y0, y1);
    if (y0 > y1) continue;
    samples_between(x_axis, (float)(px - 1), (float)(px + 1), x0, x1);
    if (x0 > x1) continue;
    const float* g = a.grads + a.grads_stride[0] * k + a.grads_stride[3] * channel;
    for (int y = y0; y <= y1; ++y) {
      Sample sy = cropcore_sample_at(cropcore_coord(y_axis, y), a.height);
      bool top = a.nearest ? sy.nearest == py : sy.low == py;
      bool bottom = !a.nearest && sy.high == py;
      if (!sy.valid || !(top || bottom)) continue;
      for (int x = x0; x <= x1; ++x) {
        Sample sx = cropcore_sample_at(cropcore_coord(x_axis, x), a.width);
        bool left = a.nearest ? sx.nearest == px : sx.low == px;
        bool right = !a.nearest && sx.high == px;
        if (!sx.valid || !(left || right)) continue;
        float grad = g[a.grads_stride[1] * y + a.grads_stride[2] * x];
        if (a.nearest) {
          acc = Acc<T>::add(acc, cropcore_flush(grad));
          continue;
        }
        cropcore_corners c = cropcore_spread(grad, sx.lerp, sy.lerp);
        if (top && left) acc = Acc<T>::add(acc, c.top_left);
        if (top && right) acc = Acc<T>::add(acc, c.top_right);
        if (bottom && left) acc = Acc<T>::add(acc, c.bottom_left);
        if (bottom && right) acc = Acc<T>::add(acc, c.bottom_right);
      }
    }
  }
  return acc;
}

// Rows of the image gradient: (image, row) in NHWC, (image, channel, row) in NCHW.
struct ImageRow {
  int b, py, channel;
};

CC_HD ImageRow image_row(const GradImageArgs& a, unsigned row) {
  ImageRow r;
  unsigned plane = divide(a.by_height, row);
  r.py = (int)(row - plane * a.by_height.divisor);
  if (a.nchw) {
    unsigned b = divide(a.by_depth, plane);
    r.b = (int)b;
    r.channel = (int)(plane - b * a.by_depth.divisor);
  } else {
    r.b = (int)plane;
    r.channel = 0;
  }
  return r;
}

template <typename T>
CC_HD void gather_element(const GradImageArgs& a, const ImageRow& r, T* output, unsigned g) {
  unsigned px = g, channel = (unsigned)r.channel;
  if (!a.nchw) {
    px = divide(a.by_depth, g);
    channel = g - px * a.by_depth.divisor;
  }
  typename Acc<T>::type acc = gather_sum<T>(a, r.b, r.py, (int)px, (int)channel);
  output[a.output_stride[0] * r.b + a.output_stride[1] * r.py + a.output_stride[2] * px +
         a.output_stride[3] * channel] = Acc<T>::store(acc);
}

// -------------------------------------------------------------------------------------------------
// CropAndResizeGradBoxes: per box, the sum over its samples of TF's four terms. Block (box, chunk)
// sums `chunk` consecutive elements of the box's (y, x, channel) sequence: each of its
// CROPCORE_REDUCE_THREADS lanes sums every lanes-th element in order, then the lanes are combined
// by a fixed tree; a second pass combines the chunks the same way. The order depends only on the
// call's shape, so the result is deterministic (it is not TF's sequential order).

struct GradBoxesArgs {
  const float* grads;
  const float* boxes;
  const int* box_indices;
  float* partial;  // (box, chunk, 4) when chunks > 1
  float* output;   // (box, 4)
  int height, width, depth, crop_height, crop_width, num_boxes;
  i64 grads_stride[4];  // (box, y, x, channel)
  i64 image_stride[4];  // (batch, row, column, channel)
  unsigned elements;    // crop_height * crop_width * depth
  unsigned chunk;       // elements per block
  unsigned chunks;
  FastDiv by_row_elements, by_depth;  // crop_width * depth, depth
};

#define CROPCORE_GRAD_BOXES_PARAMS(T)                                                           \
  const float* __restrict__ grads, const T* __restrict__ image,                                \
      const float* __restrict__ boxes, const int* __restrict__ box_indices,                     \
      float* __restrict__ partial, float* __restrict__ output, int height, int width,           \
      int depth, int crop_height, int crop_width, int num_boxes, long long grads_stride_box,    \
      long long grads_stride_y, long long grads_stride_x, long long grads_stride_channel,       \
      long long image_stride_batch, long long image_stride_row, long long image_stride_column,  \
      long long image_stride_channel, unsigned elements, unsigned chunk, unsigned chunks,       \
      CROPCORE_DIV_PARAMS(by_row_elements), CROPCORE_DIV_PARAMS(by_depth)

#define CROPCORE_GRAD_BOXES_ARGS(a)                                                             \
  cropcore::GradBoxesArgs a;                                                                    \
  a.grads = grads;                                                                              \
  a.boxes = boxes;                                                                              \
  a.box_indices = box_indices;                                                                  \
  a.partial = partial;                                                                          \
  a.output = output;                                                                            \
  a.height = height;                                                                            \
  a.width = width;                                                                              \
  a.depth = depth;                                                                              \
  a.crop_height = crop_height;                                                                  \
  a.crop_width = crop_width;                                                                    \
  a.num_boxes = num_boxes;                                                                      \
  a.grads_stride[0] = grads_stride_box;                                                         \
  a.grads_stride[1] = grads_stride_y;                                                           \
  a.grads_stride[2] = grads_stride_x;                                                           \
  a.grads_stride[3] = grads_stride_channel;                                                     \
  a.image_stride[0] = image_stride_batch;                                                       \
  a.image_stride[1] = image_stride_row;                                                         \
  a.image_stride[2] = image_stride_column;                                                      \
  a.image_stride[3] = image_stride_channel;                                                     \
  a.elements = elements;                                                                        \
  a.chunk = chunk;                                                                              \
  a.chunks = chunks;                                                                            \
  a.by_row_elements = CROPCORE_DIV(by_row_elements);                                            \
  a.by_depth = CROPCORE_DIV(by_depth)

// Lane `lane`'s sums of TF's four terms (dy1, dx1, dy2, dx2) over its elements of chunk `chunk_index`.
template <typename T>
CC_HD void grad_boxes_lane_sum(const GradBoxesArgs& a, const T* image, unsigned k,
                               unsigned chunk_index, unsigned lane, float (&sum)[4]) {
  const float* box = a.boxes + 4 * (i64)k;
  // CropAndResizeGradBoxes' own rounding: height_ratio = float(H - 1) / (ch - 1) first.
  Axis y_axis = cropcore_make_axis(box[0], box[2], a.height, a.crop_height, true);
  Axis x_axis = cropcore_make_axis(box[1], box[3], a.width, a.crop_width, true);
  const float height_minus_one = (float)(a.height - 1), width_minus_one = (float)(a.width - 1);
  const float height_ratio = a.crop_height > 1 ? height_minus_one / (float)(a.crop_height - 1) : 0.0f;
  const float width_ratio = a.crop_width > 1 ? width_minus_one / (float)(a.crop_width - 1) : 0.0f;
  const T* pixels = image + a.image_stride[0] * a.box_indices[k];
  const float* g = a.grads + a.grads_stride[0] * k;
  for (int j = 0; j < 4; ++j) sum[j] = 0.0f;
  unsigned begin = chunk_index * a.chunk;
  unsigned end = cc_min(begin + a.chunk, a.elements);
  for (unsigned e = begin + lane; e < end; e += CROPCORE_REDUCE_THREADS) {
    unsigned y = divide(a.by_row_elements, e);
    unsigned rest = e - y * a.by_row_elements.divisor;
    unsigned x = divide(a.by_depth, rest);
    unsigned channel = rest - x * a.by_depth.divisor;
    Sample sy = cropcore_sample_at(cropcore_coord(y_axis, (int)y), a.height);
    if (!sy.valid) continue;
    Sample sx = cropcore_sample_at(cropcore_coord(x_axis, (int)x), a.width);
    if (!sx.valid) continue;
    const T* p = pixels + a.image_stride[3] * channel;
    const i64 sr = a.image_stride[1], sc = a.image_stride[2];
    float top_grad = g[a.grads_stride[1] * y + a.grads_stride[2] * x + a.grads_stride[3] * channel];
    cropcore_slopes slopes = cropcore_image_slopes(
        to_float(p[sr * sy.low + sc * sx.low]), to_float(p[sr * sy.low + sc * sx.high]),
        to_float(p[sr * sy.high + sc * sx.low]), to_float(p[sr * sy.high + sc * sx.high]),
        sx.lerp, sy.lerp, top_grad);
    float image_grad_y = slopes.y, image_grad_x = slopes.x;
    if (a.crop_height > 1) {
      float position = (float)y * height_ratio;  // y * height_ratio
      sum[0] += image_grad_y * (height_minus_one - position);
      sum[2] += image_grad_y * position;
    } else {  // image_grad_y * 0.5 * (image_height - 1), in double
      float term = cropcore_flush((float)((double)image_grad_y * 0.5 * (double)(a.height - 1)));
      sum[0] += term;
      sum[2] += term;
    }
    if (a.crop_width > 1) {
      float position = (float)x * width_ratio;
      sum[1] += image_grad_x * (width_minus_one - position);
      sum[3] += image_grad_x * position;
    } else {
      float term = cropcore_flush((float)((double)image_grad_x * 0.5 * (double)(a.width - 1)));
      sum[1] += term;
      sum[3] += term;
    }
  }
}

// Lane `lane`'s sums of the chunks' partial sums (the second pass).
CC_HD void grad_boxes_chunk_sum(const GradBoxesArgs& a, unsigned k, unsigned lane,
                                float (&sum)[4]) {
  for (int j = 0; j < 4; ++j) sum[j] = 0.0f;
  for (unsigned c = lane; c < a.chunks; c += CROPCORE_REDUCE_THREADS) {
    const float* p = a.partial + ((i64)k * a.chunks + c) * 4;
    for (int j = 0; j < 4; ++j) sum[j] += p[j];
  }
}

// One level of the fixed reduction tree: lane i < half adds lane i + half.
CC_HD void tree_step(float* values, unsigned lane, unsigned half) {
  if (lane < half) values[lane] += values[lane + half];
}

}  // namespace cropcore

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

#endif  // CROPCORE_CROP_AND_RESIZE_CUH
