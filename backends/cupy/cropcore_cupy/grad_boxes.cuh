// CropAndResizeGradBoxes: per box, the sum over its samples of TF's four terms. Block (box, chunk)
// sums `chunk` consecutive elements of the box's (y, x, channel) sequence: each of its
// CROPCORE_REDUCE_THREADS lanes sums every lanes-th element in order, then the lanes are combined
// by a fixed tree; a second pass combines the chunks the same way. The order depends only on the
// call's shape, so the result is deterministic (it is not TF's sequential order). kernels.cu and
// the host harness run these functions. Requirements: those of crop_and_resize.cuh.

#ifndef CROPCORE_GRAD_BOXES_CUH
#define CROPCORE_GRAD_BOXES_CUH

#include "common.cuh"

// Threads of a box-gradient reduction block. The summation order depends on it: never change it
// at run time.
#define CROPCORE_REDUCE_THREADS 256

namespace cropcore {

struct GradBoxesArgs {
  const float* grads;
  const float* boxes;
  const int* box_indices;
  float* partial;  // (box, chunk, 4) when chunks > 1
  float* output;   // (box, 4)
  int batch;       // images: a box index outside [0, batch) is bad and its row NaN
  int height, width, depth, crop_height, crop_width, num_boxes;
  i64 grads_stride[4];  // (box, y, x, channel)
  i64 image_stride[4];  // (batch, row, column, channel)
  unsigned elements;    // crop_height * crop_width * depth
  unsigned chunk;       // elements per block
  unsigned chunks;
  FastDiv by_row_elements, by_depth;  // crop_width * depth, depth
};

#define CROPCORE_GRAD_BOXES_PARAMS(T)                                                           \
  const float* __restrict__ grads, const T* __restrict__ image,                                 \
      const float* __restrict__ boxes, const int* __restrict__ box_indices,                     \
      float* __restrict__ partial, float* __restrict__ output, int batch, int height,           \
      int width, int depth, int crop_height, int crop_width, int num_boxes,                     \
      long long grads_stride_box, long long grads_stride_y, long long grads_stride_x,           \
      long long grads_stride_channel, long long image_stride_batch, long long image_stride_row, \
      long long image_stride_column, long long image_stride_channel, unsigned elements,         \
      unsigned chunk, unsigned chunks, CROPCORE_DIV_PARAMS(by_row_elements),                    \
      CROPCORE_DIV_PARAMS(by_depth)

#define CROPCORE_GRAD_BOXES_ARGS(a)                                                             \
  cropcore::GradBoxesArgs a;                                                                    \
  CROPCORE_GRADS_ARGS(a);                                                                       \
  a.partial = partial;                                                                          \
  a.output = output;                                                                            \
  CROPCORE_IMAGE_STRIDES(a.image_stride, image_stride);                                         \
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
  const int index = a.box_indices[k];
  if (bad_index(index, a.batch)) {  // a bad box: every lane's sums NaN, so the row is NaN; no load
    for (int j = 0; j < 4; ++j) sum[j] = quiet_nan();
    return;
  }
  const T* pixels = image + a.image_stride[0] * image_index(index, a.batch);
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

#endif  // CROPCORE_GRAD_BOXES_CUH
