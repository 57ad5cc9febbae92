// PyTorch's bilinear source indices and weights, one definition for the CPU and CUDA multires_fuse kernels.
//
// F.interpolate(z, size=(H, W), mode="bilinear", align_corners=a) computes, per output dimension and in fp32
// (ATen/native/UpSample.h: area_pixel_compute_scale without a scale_factor, area_pixel_compute_source_index,
// compute_source_index_and_lambda, guard_index_and_lambda):
//   scale = a ? (in - 1) / (out - 1) (0 when out == 1) : in / out
//   src   = a ? scale * dst : max(scale * (dst + 0.5) - 0.5, 0)
//   i0    = min(floor(src), in - 1),  i1 = i0 + (i0 < in - 1),  l1 = clamp(src - i0, 0, 1),  l0 = 1 - l1
// and a dimension whose size does not change is copied (i0 = i1 = dst, l0 = 1, l1 = 0). The output is
// sum over the 2x2 taps of l_row * l_col * z[row][col].
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define HRNET_FAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HRNET_FAST_HOST_DEVICE inline
#endif

namespace hrnet_fast {

// The two source indices and weights of one output index along one dimension.
struct LinearTap {
  int64_t i0, i1;
  float l0, l1;
};

// `scale` for an input of `in` and an output of `out` elements along one dimension.
HRNET_FAST_HOST_DEVICE float linear_scale(int64_t in, int64_t out, bool align_corners) {
  if (align_corners) return out > 1 ? static_cast<float>(in - 1) / static_cast<float>(out - 1) : 0.f;
  return static_cast<float>(in) / static_cast<float>(out);
}

HRNET_FAST_HOST_DEVICE LinearTap linear_tap(float scale, int64_t dst, int64_t in, int64_t out, bool align_corners) {
  if (in == out) return {dst, dst, 1.f, 0.f};
  float src = align_corners ? scale * static_cast<float>(dst) : scale * (static_cast<float>(dst) + 0.5f) - 0.5f;
  if (!align_corners && src < 0.f) src = 0.f;
  int64_t i0 = static_cast<int64_t>(floorf(src));
  if (i0 > in - 1) i0 = in - 1;
  float l1 = src - static_cast<float>(i0);
  l1 = l1 < 0.f ? 0.f : (l1 > 1.f ? 1.f : l1);
  return {i0, i0 + (i0 < in - 1 ? 1 : 0), 1.f - l1, l1};
}

}  // namespace hrnet_fast
