// CUDA seg_normalize: out[n, c, h, w] = (images[n, h, w, c] / 255 - mean[c]) / std[c] in one pass.
//
// One thread per pixel reads its 3 bytes and writes its 3 outputs: consecutive threads store consecutive
// elements of each channel plane (NCHW) or of the interleaved row (NHWC). The arithmetic is the reference's,
// in fp32 with IEEE division (nvcc's default, no fast math), so fp32 results equal the CPU kernel's table bit for
// bit; 16-bit outputs are rounded once.
#include "dispatch.h"
#include "seg_ops.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace hrnet_fast {
namespace {

constexpr int kThreads = 256;

struct Channels {
  float mean[3];
  float std[3];
};

template <typename T>
__global__ void __launch_bounds__(kThreads) seg_normalize_kernel(
    const uint8_t* __restrict__ images,  // [N, H, W, 3]
    T* __restrict__ out,                 // [N, 3, H, W], or [N, H, W, 3] when channels_last
    int64_t plane,                       // H * W
    int64_t pixels,                      // N * H * W
    Channels k, bool channels_last) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < pixels; p += stride) {
    const int64_t n = p / plane, hw = p - n * plane;
#pragma unroll
    for (int c = 0; c < 3; ++c) {
      const float v = (static_cast<float>(images[3 * p + c]) / 255.f - k.mean[c]) / k.std[c];
      out[channels_last ? 3 * p + c : (3 * n + c) * plane + hw] = static_cast<T>(v);
    }
  }
}

}  // namespace

void seg_normalize_cuda(const NormalizeArgs& args) {
  const c10::cuda::CUDAGuard guard(args.images.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t plane = args.images.size(1) * args.images.size(2);
  const int64_t pixels = args.images.size(0) * plane;
  Channels k;
  for (int c = 0; c < 3; ++c) {
    k.mean[c] = args.mean[c];
    k.std[c] = args.std[c];
  }
  // Grid-stride loop: cap the grid, never the work.
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((pixels + kThreads - 1) / kThreads,
                                                                  int64_t{1} << 20));
  HRNET_FAST_DISPATCH_FLOAT_TYPES(args.out.scalar_type(), "seg_normalize_cuda", [&] {
    seg_normalize_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        args.images.const_data_ptr<uint8_t>(), args.out.mutable_data_ptr<scalar_t>(), plane, pixels, k,
        args.channels_last);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace hrnet_fast
