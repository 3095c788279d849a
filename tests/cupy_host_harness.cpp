// Host harness for the CuPy backend's CUDA arithmetic (tests/test_cupy_backend.py builds it).
//
// It compiles crop_and_resize.cuh -- the very functions the CUDA kernels call: its op headers,
// with the arithmetic header they include from cropcore.native -- with a host C++ compiler, and
// defines one C function per CUDA kernel, with the kernel's name and parameter list, that runs the
// kernel's loop nest serially: every (row, group) in order, atomics replaced by plain additions,
// the box-gradient reduction tree simulated lane by lane. The tests call these with the
// argument lists cropcore_cupy._plan builds for the GPU, and compare with the NumPy reference.
//
// The floating-point environment is the GPU's (and TensorFlow's CPU kernel's): flush-to-zero and
// denormals-are-zero are switched on for the duration of each call; round to nearest; the compiler
// is told not to contract a * b + c (-ffp-contract=off), as nvcc is (--fmad=false).

#include "crop_and_resize.cuh"
#include "roi_align.cuh"

#if !CROPCORE_HAS_FTZ
#error "the harness knows how to enable flush-to-zero on x86 and aarch64 only"
#endif

// TF's (and the GPU's) modes for the duration of a call: cropcore_fp_enter() of the shared header.
struct FlushToZero {
  cropcore_fpenv saved;
  FlushToZero() : saved(cropcore_fp_enter()) {}
  ~FlushToZero() { cropcore_fp_leave(saved); }
};

// roi_align's modes for the duration of a call: IEEE subnormals (torchvision and ONNX Runtime do
// not flush), whatever the caller's modes; restored after.
struct Ieee {
  cropcore_fpenv saved;
  Ieee() : saved(cropcore_fp_enter()) {
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
    _mm_setcsr(saved & ~0x8040u);  // FTZ and DAZ off
#elif defined(__aarch64__)
    __asm__ volatile("msr fpcr, %0" : : "r"(saved & ~(1ull << 24)));  // FZ off
#endif
  }
  ~Ieee() { cropcore_fp_leave(saved); }
};

namespace {

template <typename T>
struct PlainAdd {
  void operator()(T* p, float c) const { *p = cropcore::Acc<T>::store(cropcore::Acc<T>::add(load(*p), c)); }
  static typename cropcore::Acc<T>::type load(T v) { return v; }
};
template <>
inline cropcore::Acc<cropcore::half_t>::type PlainAdd<cropcore::half_t>::load(cropcore::half_t v) {
  return cropcore::half_to_float(v);
}

}  // namespace

// --- CropAndResize

#define HARNESS_FORWARD(NAME, T, VEC)                                                           \
  extern "C" void NAME(CROPCORE_FORWARD_PARAMS(T)) {                                            \
    FlushToZero ftz;                                                                            \
    CROPCORE_FORWARD_ARGS(a);                                                                   \
    for (unsigned row = 0; row < rows; ++row) {                                                 \
      cropcore::ForwardRow<T> r = cropcore::forward_row<T>(a, image, row);                      \
      for (unsigned g = 0; g < groups; ++g) cropcore::forward_group<T, VEC>(a, r, g);            \
    }                                                                                           \
  }
#define HARNESS_FORWARDS(NAME, T)                                                               \
  HARNESS_FORWARD(cropcore_forward_##NAME##_v1, T, 1)                                           \
  HARNESS_FORWARD(cropcore_forward_##NAME##_v2, T, 2)                                           \
  HARNESS_FORWARD(cropcore_forward_##NAME##_v4, T, 4)
CROPCORE_IMAGE_TYPES(HARNESS_FORWARDS)

// --- CropAndResizeGradImage

#define HARNESS_GRAD_IMAGE(NAME, T)                                                             \
  extern "C" void cropcore_grad_image_scatter_##NAME(CROPCORE_GRAD_IMAGE_PARAMS(T)) {            \
    FlushToZero ftz;                                                                            \
    CROPCORE_GRAD_IMAGE_ARGS(a);                                                                \
    PlainAdd<T> add;                                                                            \
    for (unsigned row = 0; row < rows; ++row) {                                                 \
      cropcore::ScatterRow r = cropcore::scatter_row(a, row);                                   \
      for (unsigned g = 0; g < groups; ++g) cropcore::scatter_element<T>(a, r, output, g, add);  \
    }                                                                                           \
  }                                                                                             \
  extern "C" void cropcore_grad_image_setup_##NAME(CROPCORE_GRAD_IMAGE_PARAMS(T)) {              \
    FlushToZero ftz;                                                                            \
    CROPCORE_GRAD_IMAGE_ARGS(a);                                                                \
    for (int k = 0; k < num_boxes; ++k) cropcore::box_setup(a, k);                              \
  }                                                                                             \
  extern "C" void cropcore_grad_image_gather_##NAME(CROPCORE_GRAD_IMAGE_PARAMS(T)) {             \
    FlushToZero ftz;                                                                            \
    CROPCORE_GRAD_IMAGE_ARGS(a);                                                                \
    for (unsigned row = 0; row < rows; ++row) {                                                 \
      cropcore::ImageRow r = cropcore::image_row(a, row);                                       \
      for (unsigned g = 0; g < groups; ++g) cropcore::gather_element<T>(a, r, output, g);        \
    }                                                                                           \
  }
CROPCORE_GRAD_TYPES(HARNESS_GRAD_IMAGE)

// --- CropAndResizeGradBoxes: blocks (box, chunk) of CROPCORE_REDUCE_THREADS lanes, simulated.

namespace {

void reduce_block(float (&sums)[4][CROPCORE_REDUCE_THREADS]) {
  for (unsigned half = CROPCORE_REDUCE_THREADS / 2; half > 0; half >>= 1)
    for (int j = 0; j < 4; ++j)
      for (unsigned lane = 0; lane < half; ++lane) cropcore::tree_step(sums[j], lane, half);
}

}  // namespace

#define HARNESS_GRAD_BOXES(NAME, T)                                                             \
  extern "C" void cropcore_grad_boxes_##NAME(CROPCORE_GRAD_BOXES_PARAMS(T)) {                    \
    FlushToZero ftz;                                                                            \
    CROPCORE_GRAD_BOXES_ARGS(a);                                                                \
    float sums[4][CROPCORE_REDUCE_THREADS];                                              \
    for (int k = 0; k < num_boxes; ++k) {                                                       \
      for (unsigned c = 0; c < chunks; ++c) {                                                   \
        for (unsigned lane = 0; lane < CROPCORE_REDUCE_THREADS; ++lane) {                       \
          float sum[4];                                                                         \
          cropcore::grad_boxes_lane_sum<T>(a, image, (unsigned)k, c, lane, sum);                \
          for (int j = 0; j < 4; ++j) sums[j][lane] = sum[j];                                   \
        }                                                                                       \
        reduce_block(sums);                                                                     \
        float* out = chunks == 1 ? output : partial;                                            \
        for (int j = 0; j < 4; ++j) out[((long long)k * chunks + c) * 4 + j] = sums[j][0];      \
      }                                                                                         \
    }                                                                                           \
  }                                                                                             \
  extern "C" void cropcore_grad_boxes_finish_##NAME(CROPCORE_GRAD_BOXES_PARAMS(T)) {             \
    FlushToZero ftz;                                                                            \
    CROPCORE_GRAD_BOXES_ARGS(a);                                                                \
    float sums[4][CROPCORE_REDUCE_THREADS];                                              \
    for (int k = 0; k < num_boxes; ++k) {                                                       \
      for (unsigned lane = 0; lane < CROPCORE_REDUCE_THREADS; ++lane) {                         \
        float sum[4];                                                                           \
        cropcore::grad_boxes_chunk_sum(a, (unsigned)k, lane, sum);                              \
        for (int j = 0; j < 4; ++j) sums[j][lane] = sum[j];                                     \
      }                                                                                         \
      reduce_block(sums);                                                                       \
      for (int j = 0; j < 4; ++j) output[(long long)k * 4 + j] = sums[j][0];                    \
    }                                                                                           \
  }
CROPCORE_IMAGE_TYPES(HARNESS_GRAD_BOXES)

// --- roi_align and its image gradient (set-up, then the gather)

#define HARNESS_ROI(NAME, T, C)                                                                 \
  extern "C" void cropcore_roi_align_forward_##NAME(CROPCORE_ROI_ALIGN_PARAMS(T, C)) {           \
    Ieee ieee;                                                                                  \
    CROPCORE_ROI_ALIGN_ARGS(a);                                                                 \
    for (unsigned row = 0; row < rows; ++row)                                                   \
      for (unsigned g = 0; g < groups; ++g)                                                     \
        cropcore::roi_align_element<T, C>(a, image, output, row, g);                            \
  }                                                                                             \
  extern "C" void cropcore_roi_align_grad_setup_##NAME(CROPCORE_ROI_GRAD_PARAMS(T, C)) {         \
    Ieee ieee;                                                                                  \
    CROPCORE_ROI_GRAD_ARGS(a);                                                                  \
    for (int k = 0; k < num_boxes; ++k) cropcore::roi_grad_setup<C>(a, k);                      \
  }                                                                                             \
  extern "C" void cropcore_roi_align_grad_gather_##NAME(CROPCORE_ROI_GRAD_PARAMS(T, C)) {        \
    Ieee ieee;                                                                                  \
    CROPCORE_ROI_GRAD_ARGS(a);                                                                  \
    for (unsigned row = 0; row < rows; ++row)                                                   \
      for (unsigned g = 0; g < groups; ++g)                                                     \
        cropcore::roi_grad_element<T, C>(a, grads, output, row, g);                             \
  }
CROPCORE_ROI_TYPES(HARNESS_ROI)

// --- Helpers tested on their own

extern "C" void cropcore_test_divide(unsigned divisor, unsigned magic, int shift,
                                     const unsigned* n, unsigned* q, long long count) {
  cropcore::FastDiv f = cropcore::make_div(divisor, magic, shift);
  for (long long i = 0; i < count; ++i) q[i] = cropcore::divide(f, n[i]);
}

extern "C" void cropcore_test_float_to_half(const float* v, unsigned short* h, long long count) {
  FlushToZero ftz;
  for (long long i = 0; i < count; ++i) h[i] = cropcore::float_to_half(v[i]).bits;
}

extern "C" void cropcore_test_half_to_float(const unsigned short* h, float* v, long long count) {
  FlushToZero ftz;
  for (long long i = 0; i < count; ++i) {
    cropcore::half_t x;
    x.bits = h[i];
    v[i] = cropcore::half_to_float(x);
  }
}

// For each coordinate (axis of one box): [first, last] of samples_between(lo, hi).
extern "C" void cropcore_test_samples_between(float start, float scale, int crop, int size,
                                              float lo, float hi, int* first_last) {
  FlushToZero ftz;
  cropcore::Axis a = {start, scale, crop, size};
  cropcore::samples_between(a, lo, hi, first_last[0], first_last[1]);
}

extern "C" void cropcore_test_coords(float start, float scale, int crop, float* out) {
  FlushToZero ftz;
  cropcore::Axis a = {start, scale, crop, 1};
  for (int i = 0; i < crop; ++i) out[i] = cropcore_coord(a, i);
}
