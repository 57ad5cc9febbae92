// CUDA crop_normalize: one thread per output pixel of one box; it reads its 4 taps x 3 channels of the uint8 HWC
// image once (pose_math.h's sample_rgb), blends them in fp32, normalises and writes the 3 channels (three planes
// for NCHW, three consecutive values for NHWC). The input coordinates are computed without FMA contraction, in
// the reference's order, so a coordinate on a pixel boundary falls on the same side as in the reference.
#include "dispatch.h"
#include "pose_math.h"
#include "pose_ops.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

namespace hrnet_fast {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct CropParams {
  const uint8_t* image;  // [H, W, 3]
  const float* theta;    // [K, 2, 3]
  T* out;                // [K, 3, out_h, out_w], or [K, out_h, out_w, 3] when channels_last
  int64_t H, W, out_h, out_w, pixels;  // pixels = K * out_h * out_w
  float scale[3], shift[3];
  bool channels_last;
};

// (a x + b y) + c in fp32, rounded after each operation.
__device__ __forceinline__ float affine(float a, float x, float b, float y, float c) {
  return __fadd_rn(__fadd_rn(__fmul_rn(a, x), __fmul_rn(b, y)), c);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) crop_normalize_kernel(const CropParams<T> p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= p.pixels) return;
  const int64_t x = i % p.out_w, row = i / p.out_w, y = row % p.out_h, k = row / p.out_h;
  const float* t = p.theta + k * 6;
  const float xf = static_cast<float>(x), yf = static_cast<float>(y);
  float v[3];
  pose::sample_rgb(p.image, p.H, p.W, affine(__ldg(t), xf, __ldg(t + 1), yf, __ldg(t + 2)),
                   affine(__ldg(t + 3), xf, __ldg(t + 4), yf, __ldg(t + 5)), v);
  if (p.channels_last) {
    T* o = p.out + i * 3;
#pragma unroll
    for (int c = 0; c < 3; ++c) o[c] = static_cast<T>(v[c] * p.scale[c] + p.shift[c]);
  } else {
    const int64_t plane = p.out_h * p.out_w;
    T* o = p.out + k * 3 * plane + y * p.out_w + x;
#pragma unroll
    for (int c = 0; c < 3; ++c) o[c * plane] = static_cast<T>(v[c] * p.scale[c] + p.shift[c]);
  }
}

}  // namespace

void crop_normalize_cuda(const CropArgs& args) {
  const c10::cuda::CUDAGuard guard(args.out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  HRNET_FAST_DISPATCH_FLOAT_TYPES(args.out.scalar_type(), "crop_normalize_cuda", [&] {
    CropParams<scalar_t> p{};
    p.image = args.image.const_data_ptr<uint8_t>();
    p.theta = args.theta.const_data_ptr<float>();
    p.out = args.out.mutable_data_ptr<scalar_t>();
    p.H = args.image.size(0);
    p.W = args.image.size(1);
    p.out_h = args.out.size(2);
    p.out_w = args.out.size(3);
    p.pixels = args.out.size(0) * p.out_h * p.out_w;
    for (int c = 0; c < 3; ++c) {
      p.scale[c] = args.scale[c];
      p.shift[c] = args.shift[c];
    }
    p.channels_last = args.channels_last;
    const int64_t blocks = (p.pixels + kThreads - 1) / kThreads;
    crop_normalize_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace hrnet_fast
