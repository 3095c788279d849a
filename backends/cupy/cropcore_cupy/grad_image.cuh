// CropAndResizeGradImage, two ways: scatter (a thread per grads element adds its contributions
// atomically; fast, the order of the additions varies) and gather (a thread per image-gradient
// element adds, in TF's order, the contributions of every sample whose neighbours include it:
// deterministic, and bit-identical to TF's single-threaded CPU kernel). kernels.cu and the host
// harness run these functions. Requirements: those of crop_and_resize.cuh.

#ifndef CROPCORE_GRAD_IMAGE_CUH
#define CROPCORE_GRAD_IMAGE_CUH

#include "common.cuh"

namespace cropcore {

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
  unsigned* row_masks;  // gather: per image row, mask_words words: bit k set if box k's span
                        // covers the row (any image); null (mask_words 0) to scan every box
  int mask_words;
  int batch;        // images: a box index outside [0, batch) is bad and adds nothing
  int num_boxes, height, width, depth, crop_height, crop_width;
  i64 grads_stride[4];   // (box, y, x, channel), in elements
  i64 output_stride[4];  // (batch, row, column, channel), in elements
  int nchw, nearest;
  FastDiv by_crop_height, by_depth, by_height;
};

#define CROPCORE_GRAD_IMAGE_PARAMS(T)                                                           \
  const float* __restrict__ grads, const float* __restrict__ boxes,                            \
      const int* __restrict__ box_indices, T* __restrict__ output, float* __restrict__ box_axes, \
      int* __restrict__ box_spans, unsigned* __restrict__ row_masks, int num_boxes, int batch,  \
      int height, int width, int depth, int crop_height, int crop_width, int mask_words,        \
      long long grads_stride_box, long long grads_stride_y,                                     \
      long long grads_stride_x, long long grads_stride_channel, long long output_stride_batch,  \
      long long output_stride_row, long long output_stride_column,                              \
      long long output_stride_channel, int nchw, int nearest, unsigned rows, unsigned groups,   \
      CROPCORE_DIV_PARAMS(by_crop_height), CROPCORE_DIV_PARAMS(by_depth),                       \
      CROPCORE_DIV_PARAMS(by_height)

#define CROPCORE_GRAD_IMAGE_ARGS(a)                                                             \
  cropcore::GradImageArgs a;                                                                    \
  CROPCORE_GRADS_ARGS(a);                                                                       \
  CROPCORE_CROP_ROW_ARGS(a);                                                                    \
  a.box_axes = box_axes;                                                                        \
  a.box_spans = box_spans;                                                                      \
  a.row_masks = row_masks;                                                                      \
  a.mask_words = mask_words;                                                                    \
  CROPCORE_IMAGE_STRIDES(a.output_stride, output_stride);                                       \
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
  RowSamples s = row_samples(a.boxes, cr.box, cr.y, a.height, a.width, a.crop_height, a.crop_width);
  ScatterRow r;
  r.y = s.y;
  r.x_axis = s.x_axis;
  r.grads_offset = a.grads_stride[0] * cr.box + a.grads_stride[1] * cr.y +
                   a.grads_stride[3] * cr.channel;
  const int index = a.box_indices[cr.box];
  // A bad box adds nothing: its row has no valid sample (scatter_element and the kernel loops skip
  // such rows), and its offset is image 0's, never an address from the bad index.
  if (bad_index(index, a.batch)) r.y.valid = 0;
  r.output_offset =
      a.output_stride[0] * image_index(index, a.batch) + a.output_stride[3] * cr.channel;
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
  const int index = a.box_indices[k];
  if (bad_index(index, a.batch)) {  // adds nothing: image -1 and empty spans match no element
    span[0] = -1;
    span[1] = span[3] = 1;
    span[2] = span[4] = 0;
    return;
  }
  span[0] = index;
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
  if (a.mask_words > 0) {  // the rows this box may add to (an empty span sets none)
    const unsigned bit = 1u << (k & 31);
    const int first = cc_max(span[1], 0), last = cc_min(span[2], a.height - 1);
    for (int row = first; row <= last; ++row)
      set_bits(a.row_masks + (i64)row * a.mask_words + (k >> 5), bit);
  }
}

// Box k's additions to image element (b, py, px, channel), in TF's order, onto acc.
template <typename T>
CC_HD void gather_box(const GradImageArgs& a, int k, int b, int py, int px, int channel,
                      typename Acc<T>::type& acc) {
  const int* span = a.box_spans + 5 * (i64)k;
  if (span[0] != b || py < span[1] || py > span[2] || px < span[3] || px > span[4]) return;
  const float* axes = a.box_axes + 4 * (i64)k;
  Axis y_axis = {axes[0], axes[1], a.crop_height, a.height};
  Axis x_axis = {axes[2], axes[3], a.crop_width, a.width};
  // Only samples with |coord - p| < 1 have p as a neighbour.
  int y0, y1, x0, x1;
  samples_between(y_axis, (float)(py - 1), (float)(py + 1), y0, y1);
  if (y0 > y1) return;
  samples_between(x_axis, (float)(px - 1), (float)(px + 1), x0, x1);
  if (x0 > x1) return;
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

// The gradient of image element (b, py, px, channel): TF's additions to it, in TF's order (boxes,
// crop rows, crop columns; corners top left, top right, bottom left, bottom right), each rounded as
// TF rounds it.
template <typename T>
CC_HD typename Acc<T>::type gather_sum(const GradImageArgs& a, int b, int py, int px,
                                       int channel) {
  typename Acc<T>::type acc = 0;
  if (a.mask_words > 0) {  // only the boxes whose span covers row py, in increasing order
    const unsigned* mask = a.row_masks + (i64)py * a.mask_words;
    for (int w = 0; w < a.mask_words; ++w) {
      for (unsigned bits = mask[w]; bits != 0; bits &= bits - 1)
        gather_box<T>(a, w * 32 + lowest_bit(bits), b, py, px, channel, acc);
    }
    return acc;
  }
  for (int k = 0; k < a.num_boxes; ++k) gather_box<T>(a, k, b, py, px, channel, acc);
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

}  // namespace cropcore

#endif  // CROPCORE_GRAD_IMAGE_CUH
