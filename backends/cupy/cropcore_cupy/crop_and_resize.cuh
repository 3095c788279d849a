// cropcore's CUDA arithmetic: TensorFlow's CropAndResize and its two gradients, one sample at a time.
//
// Requirements, in order:
//
// 1. Every float32 operation is the one TensorFlow's CPU kernel does, in the same order
//    (tensorflow/core/kernels/image/crop_and_resize_op.cc; cropcore_numpy.kernels mirrors it).
//    The per-sample expressions are cropcore's shared tf_crop_and_resize.h (cropcore.native),
//    which the torch backend's CPU loops compile too; the headers below add the CUDA kernels'
//    indexing, loads, accumulators and reductions.
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
// The functions live in one header per op, each including the shared part:
//
//   common.cuh      the macros, element types and float conversions, FastDiv, rows (and it
//                   includes tf_crop_and_resize.h)
//   forward.cuh     CropAndResize: vector loads and stores, a row's set-up, one output group
//   grad_image.cuh  CropAndResizeGradImage: accumulators, scatter (atomic), sample ranges and
//                   gather (deterministic)
//   grad_boxes.cuh  CropAndResizeGradBoxes: a lane's sums and the fixed reduction tree
//
// kernels.cu wraps these functions in __global__ kernels and the host harness in serial loops; both
// include this file only. Each op's parameter list and the struct it fills are defined once, in its
// header (CROPCORE_*_PARAMS / CROPCORE_*_ARGS), for both wrappers. _plan.source() pastes every
// header into one text for NVRTC.

#ifndef CROPCORE_CROP_AND_RESIZE_CUH
#define CROPCORE_CROP_AND_RESIZE_CUH

#include "common.cuh"
#include "forward.cuh"
#include "grad_boxes.cuh"
#include "grad_image.cuh"

#endif  // CROPCORE_CROP_AND_RESIZE_CUH
