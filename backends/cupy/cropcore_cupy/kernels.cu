// cropcore's CUDA kernels: the __global__ wrappers around crop_and_resize.cuh (and the op headers
// it includes: forward.cuh, grad_image.cuh, grad_boxes.cuh).
//
// One fused kernel per op: CropAndResize is one launch; CropAndResizeGradImage is one launch on a
// zeroed result (scatter, atomic) or a box set-up plus one launch (gather, deterministic);
// CropAndResizeGradBoxes is one launch, plus one that combines per-chunk sums when a box has more
// than one chunk. roi_align (roi_align.cuh) is one launch; its image gradient a box set-up plus one
// gather launch (deterministic, no floating-point atomics). Launch geometry, argument order and the
// choice of kernel are in _plan.py (and the modules it re-exports: _abi.py, _geometry.py).
//
// Compile flags (set by _plan.nvrtc_options and by the nvcc test): --fmad=false -ftz=true
// --prec-div=true (roi_align's float32 arithmetic is IEEE whatever -ftz says: roi_align.cuh).
// One of CROPCORE_OP_FORWARD, CROPCORE_OP_GRAD_IMAGE, CROPCORE_OP_GRAD_BOXES,
// CROPCORE_OP_ROI_ALIGN, CROPCORE_OP_ROI_ALIGN_GRAD (or CROPCORE_ALL_KERNELS) selects the kernels a
// module contains, so a process compiles only the ops it uses. Kernel names are extern "C":
// cropcore_<op>_<dtype>[_v<VEC>].

#include "crop_and_resize.cuh"
#include "roi_align.cuh"

#if defined(CROPCORE_ALL_KERNELS)
#define CROPCORE_OP_FORWARD
#define CROPCORE_OP_GRAD_IMAGE
#define CROPCORE_OP_GRAD_BOXES
#define CROPCORE_OP_ROI_ALIGN
#define CROPCORE_OP_ROI_ALIGN_GRAD
#endif

namespace cropcore {

// Rows on y, groups on x, both grid-stride (the launcher caps gridDim.y at 65535).
#define CROPCORE_FOR_ROWS(row, rows)                                                            \
  for (unsigned row = blockIdx.y * blockDim.y + threadIdx.y; row < (rows);                     \
       row += gridDim.y * blockDim.y)
#define CROPCORE_FOR_GROUPS(g, groups)                                                          \
  for (unsigned g = blockIdx.x * blockDim.x + threadIdx.x; g < (groups);                       \
       g += gridDim.x * blockDim.x)

template <typename T, int VEC>
__device__ void forward_kernel(const ForwardArgs& a, const T* image, unsigned rows,
                               unsigned groups) {
  CROPCORE_FOR_ROWS(row, rows) {
    ForwardRow<T> r = forward_row<T>(a, image, row);
    CROPCORE_FOR_GROUPS(g, groups) { forward_group<T, VEC>(a, r, g); }
  }
}

// Atomic `+=` with TF's rounding in T. float and double: the hardware's (float atomics flush
// subnormals, as TF's FTZ does). float16: a compare-and-swap on the aligned 32-bit word holding
// it, adding in float and rounding to float16 as TF's half `+=` does (the result buffer is padded
// so the word never extends past it).
template <typename T>
struct AtomicAdd;
template <>
struct AtomicAdd<float> {
  __device__ void operator()(float* p, float c) const { atomicAdd(p, c); }
};
template <>
struct AtomicAdd<double> {
  __device__ void operator()(double* p, float c) const { atomicAdd(p, (double)c); }
};
template <>
struct AtomicAdd<half_t> {
  __device__ void operator()(half_t* p, float c) const {
    unsigned* word = reinterpret_cast<unsigned*>(reinterpret_cast<u64>(p) & ~(u64)3);
    unsigned shift = (reinterpret_cast<u64>(p) & 2) ? 16u : 0u;
    float addend = half_to_float(float_to_half(c));
    unsigned old = *word, assumed;
    do {
      assumed = old;
      half_t current;
      current.bits = (unsigned short)(assumed >> shift);
      half_t sum = float_to_half(half_to_float(current) + addend);
      unsigned next = (assumed & ~(0xffffu << shift)) | ((unsigned)sum.bits << shift);
      old = atomicCAS(word, assumed, next);
    } while (old != assumed);
  }
};

template <typename T>
__device__ void scatter_kernel(const GradImageArgs& a, T* output, unsigned rows,
                               unsigned groups) {
  AtomicAdd<T> add;
  CROPCORE_FOR_ROWS(row, rows) {
    ScatterRow r = scatter_row(a, row);
    if (!r.y.valid) continue;
    CROPCORE_FOR_GROUPS(g, groups) { scatter_element<T>(a, r, output, g, add); }
  }
}

__device__ void setup_kernel(const GradImageArgs& a) {
  for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < a.num_boxes; k += gridDim.x * blockDim.x)
    box_setup(a, k);
}

template <typename T>
__device__ void gather_kernel(const GradImageArgs& a, T* output, unsigned rows, unsigned groups) {
  CROPCORE_FOR_ROWS(row, rows) {
    ImageRow r = image_row(a, row);
    CROPCORE_FOR_GROUPS(g, groups) { gather_element<T>(a, r, output, g); }
  }
}

// The block's four sums, each lane contributing `sum`, combined by the fixed tree (tree_step);
// the totals end in sums[j][0].
__device__ void reduce_block(float (&sums)[4][CROPCORE_REDUCE_THREADS], unsigned lane,
                             const float (&sum)[4]) {
  for (int j = 0; j < 4; ++j) sums[j][lane] = sum[j];
  __syncthreads();
  for (unsigned half = CROPCORE_REDUCE_THREADS / 2; half > 0; half >>= 1) {
    for (int j = 0; j < 4; ++j) tree_step(sums[j], lane, half);
    __syncthreads();
  }
}

// Block (box, chunk) of CROPCORE_REDUCE_THREADS threads; writes the chunk's four sums (to the
// result itself when the box has one chunk).
template <typename T>
__device__ void grad_boxes_kernel(const GradBoxesArgs& a, const T* image) {
  __shared__ float sums[4][CROPCORE_REDUCE_THREADS];
  unsigned k = blockIdx.x, chunk_index = blockIdx.y, lane = threadIdx.x;
  float sum[4];
  grad_boxes_lane_sum<T>(a, image, k, chunk_index, lane, sum);
  reduce_block(sums, lane, sum);
  if (lane < 4) {
    float* out = a.chunks == 1 ? a.output : a.partial;
    out[((i64)k * a.chunks + chunk_index) * 4 + lane] = sums[lane][0];
  }
}

// Block (box) of CROPCORE_REDUCE_THREADS threads: the box's chunk sums, combined in a fixed order.
__device__ void grad_boxes_finish_kernel(const GradBoxesArgs& a) {
  __shared__ float sums[4][CROPCORE_REDUCE_THREADS];
  unsigned k = blockIdx.x, lane = threadIdx.x;
  float sum[4];
  grad_boxes_chunk_sum(a, k, lane, sum);
  reduce_block(sums, lane, sum);
  if (lane < 4) a.output[(i64)k * 4 + lane] = sums[lane][0];
}

template <typename T, typename C>
__device__ void roi_align_kernel(const RoiAlignArgs& a, const T* image, T* output, unsigned rows,
                                 unsigned groups) {
  CROPCORE_FOR_ROWS(row, rows) {
    CROPCORE_FOR_GROUPS(g, groups) { roi_align_element<T, C>(a, image, output, row, g); }
  }
}

template <typename C>
__device__ void roi_grad_setup_kernel(const RoiGradArgs& a) {
  for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < a.num_boxes; k += gridDim.x * blockDim.x)
    roi_grad_setup<C>(a, k);
}

template <typename T, typename C>
__device__ void roi_grad_gather_kernel(const RoiGradArgs& a, const T* grads, T* output,
                                       unsigned rows, unsigned groups) {
  CROPCORE_FOR_ROWS(row, rows) {
    CROPCORE_FOR_GROUPS(g, groups) { roi_grad_element<T, C>(a, grads, output, row, g); }
  }
}

}  // namespace cropcore

// -------------------------------------------------------------------------------------------------
// The extern "C" kernels, one per (op, dtype[, VEC]).

#ifdef CROPCORE_OP_FORWARD
#define CROPCORE_FORWARD_KERNEL(NAME, T, VEC)                                                   \
  extern "C" __global__ void NAME(CROPCORE_FORWARD_PARAMS(T)) {                                 \
    CROPCORE_FORWARD_ARGS(a);                                                                   \
    cropcore::forward_kernel<T, VEC>(a, image, rows, groups);                                   \
  }
#define CROPCORE_FORWARD_KERNELS(NAME, T)                                                       \
  CROPCORE_FORWARD_KERNEL(cropcore_forward_##NAME##_v1, T, 1)                                   \
  CROPCORE_FORWARD_KERNEL(cropcore_forward_##NAME##_v2, T, 2)                                   \
  CROPCORE_FORWARD_KERNEL(cropcore_forward_##NAME##_v4, T, 4)
CROPCORE_IMAGE_TYPES(CROPCORE_FORWARD_KERNELS)
#endif

#ifdef CROPCORE_OP_GRAD_IMAGE
#define CROPCORE_GRAD_IMAGE_KERNELS(NAME, T)                                                    \
  extern "C" __global__ void cropcore_grad_image_scatter_##NAME(CROPCORE_GRAD_IMAGE_PARAMS(T)) { \
    CROPCORE_GRAD_IMAGE_ARGS(a);                                                                \
    cropcore::scatter_kernel<T>(a, output, rows, groups);                                       \
  }                                                                                             \
  extern "C" __global__ void cropcore_grad_image_setup_##NAME(CROPCORE_GRAD_IMAGE_PARAMS(T)) {   \
    CROPCORE_GRAD_IMAGE_ARGS(a);                                                                \
    cropcore::setup_kernel(a);                                                                  \
  }                                                                                             \
  extern "C" __global__ void cropcore_grad_image_gather_##NAME(CROPCORE_GRAD_IMAGE_PARAMS(T)) {  \
    CROPCORE_GRAD_IMAGE_ARGS(a);                                                                \
    cropcore::gather_kernel<T>(a, output, rows, groups);                                        \
  }
CROPCORE_GRAD_TYPES(CROPCORE_GRAD_IMAGE_KERNELS)
#endif

#ifdef CROPCORE_OP_GRAD_BOXES
#define CROPCORE_GRAD_BOXES_KERNELS(NAME, T)                                                    \
  extern "C" __global__ void cropcore_grad_boxes_##NAME(CROPCORE_GRAD_BOXES_PARAMS(T)) {         \
    CROPCORE_GRAD_BOXES_ARGS(a);                                                                \
    cropcore::grad_boxes_kernel<T>(a, image);                                                   \
  }                                                                                             \
  extern "C" __global__ void cropcore_grad_boxes_finish_##NAME(CROPCORE_GRAD_BOXES_PARAMS(T)) {  \
    CROPCORE_GRAD_BOXES_ARGS(a);                                                                \
    cropcore::grad_boxes_finish_kernel(a);                                                      \
  }
CROPCORE_IMAGE_TYPES(CROPCORE_GRAD_BOXES_KERNELS)
#endif

#ifdef CROPCORE_OP_ROI_ALIGN
#define CROPCORE_ROI_ALIGN_KERNELS(NAME, T, C)                                                  \
  extern "C" __global__ void cropcore_roi_align_forward_##NAME(CROPCORE_ROI_ALIGN_PARAMS(T, C)) { \
    CROPCORE_ROI_ALIGN_ARGS(a);                                                                 \
    cropcore::roi_align_kernel<T, C>(a, image, output, rows, groups);                           \
  }
CROPCORE_ROI_TYPES(CROPCORE_ROI_ALIGN_KERNELS)
#endif

#ifdef CROPCORE_OP_ROI_ALIGN_GRAD
#define CROPCORE_ROI_GRAD_KERNELS(NAME, T, C)                                                   \
  extern "C" __global__ void cropcore_roi_align_grad_setup_##NAME(                              \
      CROPCORE_ROI_GRAD_PARAMS(T, C)) {                                                         \
    CROPCORE_ROI_GRAD_ARGS(a);                                                                  \
    cropcore::roi_grad_setup_kernel<C>(a);                                                      \
  }                                                                                             \
  extern "C" __global__ void cropcore_roi_align_grad_gather_##NAME(                             \
      CROPCORE_ROI_GRAD_PARAMS(T, C)) {                                                         \
    CROPCORE_ROI_GRAD_ARGS(a);                                                                  \
    cropcore::roi_grad_gather_kernel<T, C>(a, grads, output, rows, groups);                     \
  }
CROPCORE_ROI_TYPES(CROPCORE_ROI_GRAD_KERNELS)
#endif
