// CropAndResize, one output group at a time: a crop row's set-up (forward_row) and the VEC
// channels of one column (forward_group). kernels.cu and the host harness run them over
// rows x groups. Requirements: those of crop_and_resize.cuh.

#ifndef CROPCORE_FORWARD_CUH
#define CROPCORE_FORWARD_CUH

#include "common.cuh"

namespace cropcore {

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
// CropAndResize

struct ForwardArgs {
  const float* boxes;
  const int* box_indices;
  float* crops;
  int batch;  // images in the batch: a box index outside [0, batch) is bad
  int height, width, depth;
  i64 stride[4];  // image strides (batch, row, column, channel), in elements
  int crop_height, crop_width;
  int nchw, nearest;
  float extrapolation_value;
  unsigned row_length;        // output elements per row
  unsigned groups_per_pixel;  // NHWC: depth / VEC
  FastDiv by_crop_height, by_depth, by_groups_per_pixel;
};

#define CROPCORE_FORWARD_PARAMS(T)                                                              \
  const T* __restrict__ image, const float* __restrict__ boxes,                                 \
      const int* __restrict__ box_indices, float* __restrict__ crops, int batch, int height,    \
      int width, int depth, long long stride_batch, long long stride_row,                       \
      long long stride_column, long long stride_channel, int crop_height, int crop_width,       \
      int nchw, int nearest, float extrapolation_value, unsigned rows, unsigned groups,         \
      unsigned row_length, unsigned groups_per_pixel, CROPCORE_DIV_PARAMS(by_crop_height),      \
      CROPCORE_DIV_PARAMS(by_depth), CROPCORE_DIV_PARAMS(by_groups_per_pixel)

#define CROPCORE_FORWARD_ARGS(a)                                                                \
  cropcore::ForwardArgs a;                                                                      \
  CROPCORE_SHARED_ARGS(a);                                                                      \
  CROPCORE_CROP_ROW_ARGS(a);                                                                    \
  a.crops = crops;                                                                              \
  CROPCORE_IMAGE_STRIDES(a.stride, stride);                                                     \
  a.extrapolation_value = extrapolation_value;                                                  \
  a.row_length = row_length;                                                                    \
  a.groups_per_pixel = groups_per_pixel;                                                        \
  a.by_groups_per_pixel = CROPCORE_DIV(by_groups_per_pixel)

template <typename T>
struct ForwardRow {
  const T* top;      // the image row above the samples (at channel 0, or at the row's channel)
  const T* bottom;   // the row below
  const T* nearest;  // the nearest row
  float* out;        // the row's first output element
  Sample y;
  Axis x_axis;
  bool bad;  // the box index is outside [0, batch): the row is NaN, nothing is loaded
};

template <typename T>
CC_HD ForwardRow<T> forward_row(const ForwardArgs& a, const T* image, unsigned row) {
  CropRow cr = crop_row(row, a.nchw, a.by_crop_height, a.by_depth);
  RowSamples s = row_samples(a.boxes, cr.box, cr.y, a.height, a.width, a.crop_height, a.crop_width);
  ForwardRow<T> r;
  r.y = s.y;
  r.x_axis = s.x_axis;
  const int index = a.box_indices[cr.box];
  r.bad = bad_index(index, a.batch);
  const T* pixels =
      image + a.stride[0] * image_index(index, a.batch) + a.stride[3] * (i64)cr.channel;
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
  if (r.bad) {
CC_UNROLL
    for (int i = 0; i < VEC; ++i) v[i] = quiet_nan();
    store<VEC>(r.out + (i64)g * VEC, v);
    return;
  }
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

}  // namespace cropcore

#endif  // CROPCORE_FORWARD_CUH
