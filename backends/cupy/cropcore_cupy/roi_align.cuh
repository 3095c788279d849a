// roi_align (torchvision's and ONNX Runtime's RoiAlign) and its image gradient, a few channels of
// one output element at a time. kernels.cu and the host harness run these functions.
//
// Requirements, in order:
//
// 1. Every operation is the one torchvision's CPU kernel does, in the compute dtype C (float for
//    float16 and float32 images, double for float64), in the same order -- the order of the numba
//    kernel (cropcore_numba/roi_align.py) and of cropcore.roi_samples, which are bit-identical with
//    the reference (cropcore_numpy.roi_align_reference) and with ONNX Runtime:
//      per box:     start = x1 * scale - offset; size = end - start (at least 1 unless aligned);
//                   bin = size / pooled; grid = sampling_ratio, or ceil(size / pooled);
//      per sample:  c = (start + p * bin) + ((float)(i + .5f) * bin) / grid, clamped to the image
//                   (empty beyond one pixel outside: weights 0 at pixel (0, 0));
//      forward:     acc += ((w1 * v1 + w2 * v2) + w3 * v3) + w4 * v4 over the samples, then
//                   acc / max(count, 1) (avg); or the std::max chain (max);
//      gradient:    acc += (g * w) / count, over boxes, bins, samples, corners.
// 2. IEEE arithmetic, subnormals kept: torchvision and ONNX Runtime do not flush. The module is
//    compiled with -ftz=true as every CuPy module is (CuPy appends the option after ours, and
//    NVRTC honours the last), so float32 additions, products, quotients and comparisons are
//    written as PTX without .ftz (ieee_* below); double arithmetic never flushes. --fmad=false
//    and the explicit .rn keep a * b + c from being contracted.
// 3. The same text compiles three ways (NVRTC, nvcc, a host C++ compiler): no standard headers
//    under CUDA, no CUDA intrinsics outside `#ifdef __CUDA_ARCH__`.
// 4. Unchecked values (docs/cupy.md): a box index outside [0, batch) makes its box bad -- a NaN
//    result, nothing in the gradient, no load formed from the index; so does a box of more than
//    CROPCORE_ROI_MAX_BOX_SAMPLES samples (only possible with unread adaptive-grid boxes: checked
//    calls refuse more than 2**31 samples on the host first). A non-finite box gives empty samples.
//
// The gradient is a gather, deterministic: a set-up pass finds the rectangle of pixels each box's
// samples touch (and sets the box's bit in the row masks of the rows it covers, as grad_image.cuh's
// gather does); then one thread per pixel and CROPCORE_ROI_CHANNELS channels of the image gradient
// adds, in torchvision's order, the contributions of every box whose rectangle holds the pixel. No
// floating-point atomics.

#ifndef CROPCORE_ROI_ALIGN_CUH
#define CROPCORE_ROI_ALIGN_CUH

#include "common.cuh"

// The most samples (bins x samples per bin) one box may take; a box beyond it is bad.
#define CROPCORE_ROI_MAX_BOX_SAMPLES 2147483648LL
// The largest adaptive grid per axis (cropcore.roi_samples caps ceil() at 2**40 too).
#define CROPCORE_ROI_MAX_GRID 1099511627776LL
// Channels one thread computes side by side (forward and image gradient): the samples' geometry,
// the same for every channel, is computed once for them (each channel's operations keep their own
// order).
#define CROPCORE_ROI_CHANNELS 4

namespace cropcore {

// -------------------------------------------------------------------------------------------------
// IEEE arithmetic in the compute dtype, whatever -ftz says (see 2. above).

CC_HD float ieee_add(float a, float b) {
#ifdef __CUDA_ARCH__
  float r;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a + b;
#endif
}
CC_HD float ieee_sub(float a, float b) {
#ifdef __CUDA_ARCH__
  float r;
  asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a - b;
#endif
}
CC_HD float ieee_mul(float a, float b) {
#ifdef __CUDA_ARCH__
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a * b;
#endif
}
CC_HD float ieee_div(float a, float b) {
#ifdef __CUDA_ARCH__
  float r;
  asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a / b;
#endif
}
// a < b and a <= b, subnormals compared as they are (setp without .ftz).
CC_HD bool ieee_lt(float a, float b) {
#ifdef __CUDA_ARCH__
  unsigned r;
  asm("{\n\t.reg .pred p;\n\tsetp.lt.f32 p, %1, %2;\n\tselp.u32 %0, 1, 0, p;\n\t}"
      : "=r"(r)
      : "f"(a), "f"(b));
  return r != 0;
#else
  return a < b;
#endif
}
CC_HD bool ieee_le(float a, float b) {
#ifdef __CUDA_ARCH__
  unsigned r;
  asm("{\n\t.reg .pred p;\n\tsetp.le.f32 p, %1, %2;\n\tselp.u32 %0, 1, 0, p;\n\t}"
      : "=r"(r)
      : "f"(a), "f"(b));
  return r != 0;
#else
  return a <= b;
#endif
}
CC_HD bool roi_finite(float v) { return cropcore_is_finite(v); }

CC_HD double ieee_add(double a, double b) { return a + b; }
CC_HD double ieee_sub(double a, double b) { return a - b; }
CC_HD double ieee_mul(double a, double b) { return a * b; }
CC_HD double ieee_div(double a, double b) { return a / b; }
CC_HD bool ieee_lt(double a, double b) { return a < b; }
CC_HD bool ieee_le(double a, double b) { return a <= b; }
CC_HD bool roi_finite(double v) { return v - v == 0.0; }  // false for inf and NaN

// C++'s std::max(a, b): a < b ? b : a.
template <typename C>
CC_HD C roi_max(C a, C b) { return ieee_lt(a, b) ? b : a; }

// Elements as the compute dtype (float16 converted exactly), and back (float16 rounded once).
CC_HD float roi_value(half_t v) { return half_to_float(v); }
CC_HD float roi_value(float v) { return v; }
CC_HD double roi_value(double v) { return v; }
CC_HD void roi_store(half_t* p, float v) { *p = float_to_half(v); }
CC_HD void roi_store(float* p, float v) { *p = v; }
CC_HD void roi_store(double* p, double v) { *p = v; }

// spatial_scale as the compute dtype: rounded to float on the host (NumPy's rounding), exact in
// double.
CC_HD float roi_scale(float, double, float scale_f32) { return scale_f32; }
CC_HD double roi_scale(double, double scale, float) { return scale; }

// -------------------------------------------------------------------------------------------------
// Per box and per sample

template <typename C>
struct RoiAxis {
  C start, bin;
  long long grid;  // samples per bin along this axis (0: none)
  int pooled, size;
};

// ceil(x) as a sample count: 0 for a non-positive or non-finite x, at most 2**40.
template <typename C>
CC_HD long long roi_ceil(C x) {
  if (!roi_finite(x) || !ieee_lt((C)0, x)) return 0;
  if (!ieee_lt(x, (C)CROPCORE_ROI_MAX_GRID)) return CROPCORE_ROI_MAX_GRID;
  long long t = (long long)x;  // x < 2**40: exact in C, and so is (C)t
  return ieee_lt((C)t, x) ? t + 1 : t;
}

// One box's two axes: y (rows) and x (columns), as torchvision's roi_align computes them.
template <typename C>
struct RoiBox {
  RoiAxis<C> y, x;
  long long samples;  // grid_h * grid_w
};

template <typename C>
CC_HD RoiBox<C> roi_box(const C* box, C scale, int aligned, int sampling_ratio, int pooled_height,
                        int pooled_width, int height, int width) {
  const C offset = aligned ? (C)0.5 : (C)0;
  const C start_w = ieee_sub(ieee_mul(box[0], scale), offset);
  const C start_h = ieee_sub(ieee_mul(box[1], scale), offset);
  const C end_w = ieee_sub(ieee_mul(box[2], scale), offset);
  const C end_h = ieee_sub(ieee_mul(box[3], scale), offset);
  C size_w = ieee_sub(end_w, start_w), size_h = ieee_sub(end_h, start_h);
  if (!aligned) {  // malformed boxes are forced to 1 x 1
    if (ieee_lt(size_w, (C)1)) size_w = (C)1;
    if (ieee_lt(size_h, (C)1)) size_h = (C)1;
  }
  RoiBox<C> r;
  r.y.start = start_h;
  r.x.start = start_w;
  r.y.bin = ieee_div(size_h, (C)pooled_height);
  r.x.bin = ieee_div(size_w, (C)pooled_width);
  if (sampling_ratio > 0) {
    r.y.grid = r.x.grid = sampling_ratio;
  } else {
    r.y.grid = roi_ceil(ieee_div(size_h, (C)pooled_height));
    r.x.grid = roi_ceil(ieee_div(size_w, (C)pooled_width));
  }
  r.y.pooled = pooled_height;
  r.x.pooled = pooled_width;
  r.y.size = height;
  r.x.size = width;
  r.samples = r.y.grid * r.x.grid;  // each at most 2**40: no overflow
  return r;
}

// Whether a box takes more samples than one box may (its bins times its grid).
template <typename C>
CC_HD bool roi_too_many(const RoiBox<C>& b) {
  if (b.y.grid == 0 || b.x.grid == 0) return false;
  if (b.y.grid > CROPCORE_ROI_MAX_BOX_SAMPLES || b.x.grid > CROPCORE_ROI_MAX_BOX_SAMPLES)
    return true;
  const long long bins = (long long)b.y.pooled * b.x.pooled;
  return b.samples > CROPCORE_ROI_MAX_BOX_SAMPLES / bins;
}

// Sample i of bin p: (start + p * bin) + ((float)(i + .5f) * bin) / grid.
template <typename C>
CC_HD C roi_coord(const RoiAxis<C>& a, int p, long long i) {
  const C half = (C)ieee_add((float)i, 0.5f);
  const C grid = (C)(a.grid > 0 ? a.grid : 1);
  return ieee_add(ieee_add(a.start, ieee_mul((C)p, a.bin)), ieee_div(ieee_mul(half, a.bin), grid));
}

// One axis of a sample: inside (within one pixel of the image), its two pixels and weights.
template <typename C>
struct RoiSample {
  bool inside;
  int low, high;
  C frac, rest;  // the weights of the high and the low pixel
};

template <typename C>
CC_HD RoiSample<C> roi_sample(C c, int size) {
  RoiSample<C> s;
  s.inside = roi_finite(c) && !(ieee_lt(c, (C)-1) || ieee_lt((C)size, c));
  s.low = s.high = 0;
  s.frac = s.rest = (C)0;
  if (!s.inside) return s;
  if (ieee_le(c, (C)0)) c = (C)0;
  s.low = (int)c;  // c <= size <= 2**24
  if (s.low >= size - 1) {
    s.low = s.high = size - 1;
    c = (C)s.low;
  } else {
    s.high = s.low + 1;
  }
  s.frac = ieee_sub(c, (C)s.low);
  s.rest = ieee_sub((C)1, s.frac);
  return s;
}

// -------------------------------------------------------------------------------------------------
// The kernels' parameters

struct RoiAlignArgs {
  const void* boxes;  // (num_boxes, 4) x1, y1, x2, y2 in C
  const int* box_indices;
  int batch, height, width, depth;  // a box index outside [0, batch) is bad
  int pooled_height, pooled_width, sampling_ratio, aligned, max_mode, nchw;
  double spatial_scale;
  float spatial_scale_f32;
  i64 stride[4];         // image strides (batch, row, column, channel), in elements
  i64 output_stride[4];  // (box, bin row, bin column, channel), in elements
  FastDiv by_pooled_height, by_chunks;  // chunks: ceil(depth / CROPCORE_ROI_CHANNELS)
};

#define CROPCORE_ROI_ALIGN_PARAMS(T, C)                                                         \
  const T* __restrict__ image, const C* __restrict__ boxes, const int* __restrict__ box_indices, \
      T* __restrict__ output, int batch, int height, int width, int depth, int pooled_height,   \
      int pooled_width, int sampling_ratio, int aligned, int max_mode, int nchw,                \
      double spatial_scale, float spatial_scale_f32, long long stride_batch,                    \
      long long stride_row, long long stride_column, long long stride_channel,                  \
      long long output_stride_box, long long output_stride_y, long long output_stride_x,       \
      long long output_stride_channel, unsigned rows, unsigned groups,                          \
      CROPCORE_DIV_PARAMS(by_pooled_height), CROPCORE_DIV_PARAMS(by_chunks)

#define CROPCORE_ROI_SHARED_ARGS(a)                                                             \
  a.boxes = boxes;                                                                              \
  a.box_indices = box_indices;                                                                  \
  a.batch = batch;                                                                              \
  a.height = height;                                                                            \
  a.width = width;                                                                              \
  a.depth = depth;                                                                              \
  a.pooled_height = pooled_height;                                                              \
  a.pooled_width = pooled_width;                                                                \
  a.sampling_ratio = sampling_ratio;                                                            \
  a.aligned = aligned;                                                                          \
  a.nchw = nchw;                                                                                \
  a.spatial_scale = spatial_scale;                                                              \
  a.spatial_scale_f32 = spatial_scale_f32

#define CROPCORE_ROI_ALIGN_ARGS(a)                                                              \
  cropcore::RoiAlignArgs a;                                                                     \
  CROPCORE_ROI_SHARED_ARGS(a);                                                                  \
  a.max_mode = max_mode;                                                                        \
  CROPCORE_IMAGE_STRIDES(a.stride, stride);                                                     \
  cropcore::set_strides(a.output_stride, output_stride_box, output_stride_y, output_stride_x,  \
                        output_stride_channel);                                                 \
  a.by_pooled_height = CROPCORE_DIV(by_pooled_height);                                          \
  a.by_chunks = CROPCORE_DIV(by_chunks)

template <typename C>
CC_HD RoiBox<C> roi_box_of(const void* boxes, int k, double scale, float scale_f32, int aligned,
                           int sampling_ratio, int pooled_height, int pooled_width, int height,
                           int width) {
  const C* box = static_cast<const C*>(boxes) + 4 * (i64)k;
  return roi_box<C>(box, roi_scale(C(), scale, scale_f32), aligned, sampling_ratio, pooled_height,
                    pooled_width, height, width);
}

// -------------------------------------------------------------------------------------------------
// Forward: up to CROPCORE_ROI_CHANNELS output elements (a bin of a box, consecutive channels) per
// call. A row is (box, bin row) in NHWC, (box, chunk of channels, bin row) in NCHW (crop_row's
// split over chunks); a group is (bin column, chunk) in NHWC, a bin column in NCHW.

template <typename T, typename C>
CC_HD void roi_align_element(const RoiAlignArgs& a, const T* image, T* output, unsigned row,
                             unsigned g) {
  CropRow cr = crop_row(row, a.nchw, a.by_pooled_height, a.by_chunks);
  unsigned pw = g, chunk = cr.channel;
  if (!a.nchw) {
    pw = divide(a.by_chunks, g);
    chunk = g - pw * a.by_chunks.divisor;
  }
  const int ph = (int)cr.y, k = (int)cr.box;
  const int channel = (int)chunk * CROPCORE_ROI_CHANNELS;
  const int n = cc_min(CROPCORE_ROI_CHANNELS, a.depth - channel);
  const i64 oc = a.output_stride[3];
  T* out = output + a.output_stride[0] * k + a.output_stride[1] * ph + a.output_stride[2] * pw +
           oc * channel;
  const int index = a.box_indices[k];
  RoiBox<C> b = roi_box_of<C>(a.boxes, k, a.spatial_scale, a.spatial_scale_f32, a.aligned,
                              a.sampling_ratio, a.pooled_height, a.pooled_width, a.height,
                              a.width);
  if (bad_index(index, a.batch) || roi_too_many(b)) {
    for (int c = 0; c < n; ++c) roi_store(out + oc * c, (C)quiet_nan());
    return;
  }
  const i64 sy = a.stride[1], sx = a.stride[2], sc = a.stride[3];
  const T* plane = image + a.stride[0] * (i64)index + sc * (i64)channel;
  C acc[CROPCORE_ROI_CHANNELS];
  for (int c = 0; c < CROPCORE_ROI_CHANNELS; ++c) acc[c] = (C)0;
  bool first = true;
  for (long long iy = 0; iy < b.y.grid; ++iy) {
    RoiSample<C> ys = roi_sample(roi_coord(b.y, ph, iy), a.height);
    for (long long ix = 0; ix < b.x.grid; ++ix) {
      RoiSample<C> xs = roi_sample(roi_coord(b.x, (int)pw, ix), a.width);
      // An empty sample: weights 0 at pixel (0, 0), as torchvision (0 * inf is NaN there too).
      C w1 = (C)0, w2 = (C)0, w3 = (C)0, w4 = (C)0;
      int yl = 0, yh = 0, xl = 0, xh = 0;
      if (ys.inside && xs.inside) {
        w1 = ieee_mul(ys.rest, xs.rest);
        w2 = ieee_mul(ys.rest, xs.frac);
        w3 = ieee_mul(ys.frac, xs.rest);
        w4 = ieee_mul(ys.frac, xs.frac);
        yl = ys.low;
        yh = ys.high;
        xl = xs.low;
        xh = xs.high;
      }
      const i64 o1 = sy * yl + sx * xl, o2 = sy * yl + sx * xh;
      const i64 o3 = sy * yh + sx * xl, o4 = sy * yh + sx * xh;
      for (int c = 0; c < n; ++c) {
        const T* p = plane + sc * c;
        const C p1 = ieee_mul(w1, roi_value(p[o1]));
        const C p2 = ieee_mul(w2, roi_value(p[o2]));
        const C p3 = ieee_mul(w3, roi_value(p[o3]));
        const C p4 = ieee_mul(w4, roi_value(p[o4]));
        if (a.max_mode) {
          const C val = roi_max(roi_max(roi_max(p1, p2), p3), p4);
          acc[c] = first ? val : roi_max(acc[c], val);
        } else {
          acc[c] = ieee_add(acc[c], ieee_add(ieee_add(ieee_add(p1, p2), p3), p4));
        }
      }
      first = false;
    }
  }
  const C count = (C)(b.samples > 0 ? b.samples : 1);
  for (int c = 0; c < n; ++c)
    roi_store(out + oc * c, a.max_mode ? acc[c] : ieee_div(acc[c], count));
}

// -------------------------------------------------------------------------------------------------
// Image gradient (gather)

struct RoiGradArgs {
  const void* boxes;
  const int* box_indices;
  int* box_spans;  // per box (image, first row, last row, first column, last column)
  unsigned* row_masks;  // per image row, mask_words words: bit k set if box k's span covers the
                        // row; null (mask_words 0) to test every box
  int mask_words;
  int batch, height, width, depth;
  int pooled_height, pooled_width, sampling_ratio, aligned, nchw;
  int num_boxes;
  double spatial_scale;
  float spatial_scale_f32;
  i64 grads_stride[4];   // (box, y, x, channel), in elements
  i64 output_stride[4];  // (batch, row, column, channel), in elements
  FastDiv by_height, by_chunks;  // chunks: ceil(depth / CROPCORE_ROI_CHANNELS)
};

#define CROPCORE_ROI_GRAD_PARAMS(T, C)                                                          \
  const T* __restrict__ grads, const C* __restrict__ boxes, const int* __restrict__ box_indices, \
      T* __restrict__ output, int* __restrict__ box_spans, unsigned* __restrict__ row_masks,   \
      int num_boxes, int mask_words, int batch, int height, int width, int depth,               \
      int pooled_height, int pooled_width, int sampling_ratio, int aligned, int nchw,           \
      double spatial_scale, float spatial_scale_f32,                                            \
      long long grads_stride_box, long long grads_stride_y, long long grads_stride_x,          \
      long long grads_stride_channel, long long output_stride_batch,                            \
      long long output_stride_row, long long output_stride_column,                              \
      long long output_stride_channel, unsigned rows, unsigned groups,                          \
      CROPCORE_DIV_PARAMS(by_height), CROPCORE_DIV_PARAMS(by_chunks)

#define CROPCORE_ROI_GRAD_ARGS(a)                                                               \
  cropcore::RoiGradArgs a;                                                                      \
  CROPCORE_ROI_SHARED_ARGS(a);                                                                  \
  a.box_spans = box_spans;                                                                      \
  a.row_masks = row_masks;                                                                      \
  a.mask_words = mask_words;                                                                    \
  a.num_boxes = num_boxes;                                                                      \
  cropcore::set_strides(a.grads_stride, grads_stride_box, grads_stride_y, grads_stride_x,      \
                        grads_stride_channel);                                                  \
  CROPCORE_IMAGE_STRIDES(a.output_stride, output_stride);                                       \
  a.by_height = CROPCORE_DIV(by_height);                                                        \
  a.by_chunks = CROPCORE_DIV(by_chunks)

template <typename C>
CC_HD RoiBox<C> roi_grad_box(const RoiGradArgs& a, int k) {
  return roi_box_of<C>(a.boxes, k, a.spatial_scale, a.spatial_scale_f32, a.aligned,
                       a.sampling_ratio, a.pooled_height, a.pooled_width, a.height, a.width);
}

// The pixels one axis's inside samples touch, [first, last] (empty: first > last).
template <typename C>
CC_HD void roi_axis_span(const RoiAxis<C>& axis, int& first, int& last) {
  first = axis.size;
  last = -1;
  for (int p = 0; p < axis.pooled; ++p) {
    for (long long i = 0; i < axis.grid; ++i) {
      RoiSample<C> s = roi_sample(roi_coord(axis, p, i), axis.size);
      if (!s.inside) continue;
      first = cc_min(first, s.low);
      last = cc_max(last, s.high);
    }
  }
}

// Per box: the image it adds to and the rectangle of pixels its samples touch (a bad box, or one
// without samples, matches no element: image -1).
template <typename C>
CC_HD void roi_grad_setup(const RoiGradArgs& a, int k) {
  int* span = a.box_spans + 5 * (i64)k;
  const int index = a.box_indices[k];
  RoiBox<C> b = roi_grad_box<C>(a, k);
  span[0] = -1;
  span[1] = span[3] = 1;
  span[2] = span[4] = 0;
  if (bad_index(index, a.batch) || roi_too_many(b) || b.samples == 0) return;
  int y0, y1, x0, x1;
  roi_axis_span(b.y, y0, y1);
  roi_axis_span(b.x, x0, x1);
  if (y0 > y1 || x0 > x1) return;
  span[0] = index;
  span[1] = y0;
  span[2] = y1;
  span[3] = x0;
  span[4] = x1;
  if (a.mask_words > 0) {  // the rows this box adds to (bits are order-free: atomicOr)
    const unsigned bit = 1u << (k & 31);
    for (int row = y0; row <= y1; ++row)
      set_bits(a.row_masks + (i64)row * a.mask_words + (k >> 5), bit);
  }
}

// Whether any inside sample of bin p touches pixel q along this axis.
template <typename C>
CC_HD bool roi_bin_touches(const RoiAxis<C>& axis, int p, int q) {
  for (long long i = 0; i < axis.grid; ++i) {
    RoiSample<C> s = roi_sample(roi_coord(axis, p, i), axis.size);
    if (s.inside && (s.low == q || s.high == q)) return true;
  }
  return false;
}

// acc += (g * w) / count, rounded in C as torchvision's `+=`, for each of n channels.
template <typename C>
CC_HD void roi_add(C (&acc)[CROPCORE_ROI_CHANNELS], const C (&g)[CROPCORE_ROI_CHANNELS], int n,
                   C w, C count) {
  for (int c = 0; c < n; ++c) acc[c] = ieee_add(acc[c], ieee_div(ieee_mul(g[c], w), count));
}

// Box k's additions to image elements (b, py, px, channel + c), c < n, in torchvision's order,
// onto acc.
template <typename T, typename C>
CC_HD void roi_grad_box_sum(const RoiGradArgs& a, const T* grads, int k, int b, int py, int px,
                            int channel, int n, C (&acc)[CROPCORE_ROI_CHANNELS]) {
  const int* span = a.box_spans + 5 * (i64)k;
  if (span[0] != b || py < span[1] || py > span[2] || px < span[3] || px > span[4]) return;
  RoiBox<C> box = roi_grad_box<C>(a, k);
  const C count = (C)box.samples;
  const T* g_box = grads + a.grads_stride[0] * (i64)k + a.grads_stride[3] * (i64)channel;
  for (int ph = 0; ph < a.pooled_height; ++ph) {
    if (!roi_bin_touches(box.y, ph, py)) continue;
    for (int pw = 0; pw < a.pooled_width; ++pw) {
      if (!roi_bin_touches(box.x, pw, px)) continue;
      C g[CROPCORE_ROI_CHANNELS];
      const T* g_bin = g_box + a.grads_stride[1] * ph + a.grads_stride[2] * pw;
      for (int c = 0; c < n; ++c) g[c] = roi_value(g_bin[a.grads_stride[3] * c]);
      for (long long iy = 0; iy < box.y.grid; ++iy) {
        RoiSample<C> ys = roi_sample(roi_coord(box.y, ph, iy), a.height);
        const bool top = ys.low == py, bottom = ys.high == py;
        if (!ys.inside || !(top || bottom)) continue;
        for (long long ix = 0; ix < box.x.grid; ++ix) {
          RoiSample<C> xs = roi_sample(roi_coord(box.x, pw, ix), a.width);
          const bool left = xs.low == px, right = xs.high == px;
          if (!xs.inside || !(left || right)) continue;
          if (top && left) roi_add(acc, g, n, ieee_mul(ys.rest, xs.rest), count);
          if (top && right) roi_add(acc, g, n, ieee_mul(ys.rest, xs.frac), count);
          if (bottom && left) roi_add(acc, g, n, ieee_mul(ys.frac, xs.rest), count);
          if (bottom && right) roi_add(acc, g, n, ieee_mul(ys.frac, xs.frac), count);
        }
      }
    }
  }
}

// The gradient of image elements (b, py, px, channel + c), c < n: torchvision's additions to
// each, in its order (boxes, bin rows, bin columns, sample rows, sample columns; corners top left,
// top right, bottom left, bottom right).
template <typename T, typename C>
CC_HD void roi_grad_sum(const RoiGradArgs& a, const T* grads, int b, int py, int px, int channel,
                        int n, C (&acc)[CROPCORE_ROI_CHANNELS]) {
  for (int c = 0; c < CROPCORE_ROI_CHANNELS; ++c) acc[c] = (C)0;
  if (a.mask_words > 0) {  // only the boxes whose span covers row py, in increasing order
    const unsigned* mask = a.row_masks + (i64)py * a.mask_words;
    for (int w = 0; w < a.mask_words; ++w) {
      for (unsigned bits = mask[w]; bits != 0; bits &= bits - 1)
        roi_grad_box_sum<T, C>(a, grads, w * 32 + lowest_bit(bits), b, py, px, channel, n, acc);
    }
    return;
  }
  for (int k = 0; k < a.num_boxes; ++k)
    roi_grad_box_sum<T, C>(a, grads, k, b, py, px, channel, n, acc);
}

// Rows of the image gradient, as grad_image.cuh's image_row but over chunks of
// CROPCORE_ROI_CHANNELS channels: rows (image, row) and groups (column, chunk) in NHWC; rows
// (image, chunk, row) and groups (column) in NCHW.
template <typename T, typename C>
CC_HD void roi_grad_element(const RoiGradArgs& a, const T* grads, T* output, unsigned row,
                            unsigned g) {
  unsigned plane = divide(a.by_height, row);
  const int py = (int)(row - plane * a.by_height.divisor);
  int b = (int)plane, chunk = 0, px = (int)g;
  if (a.nchw) {
    b = (int)divide(a.by_chunks, plane);
    chunk = (int)(plane - (unsigned)b * a.by_chunks.divisor);
  } else {
    px = (int)divide(a.by_chunks, g);
    chunk = (int)(g - (unsigned)px * a.by_chunks.divisor);
  }
  const int channel = chunk * CROPCORE_ROI_CHANNELS;
  const int n = cc_min(CROPCORE_ROI_CHANNELS, a.depth - channel);
  C acc[CROPCORE_ROI_CHANNELS];
  roi_grad_sum<T, C>(a, grads, b, py, px, channel, n, acc);
  T* out = output + a.output_stride[0] * b + a.output_stride[1] * py + a.output_stride[2] * px +
           a.output_stride[3] * channel;
  for (int c = 0; c < n; ++c) roi_store(out + a.output_stride[3] * c, acc[c]);
}

}  // namespace cropcore

// The instantiations: (name, element type, compute type).
#define CROPCORE_ROI_TYPES(X)                                                                   \
  X(float16, cropcore::half_t, float)                                                           \
  X(float32, float, float)                                                                      \
  X(float64, double, double)

#endif  // CROPCORE_ROI_ALIGN_CUH
