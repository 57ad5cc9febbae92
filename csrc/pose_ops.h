// Kernel entry points of the pose ops of the hrnet_fast_C library (crop_normalize, heatmap_decode), shared by
// their registration (pose_ops.cpp) and the per-device kernels (cpu/, cuda/). pose_ops.cpp validates every input
// and makes it dense before a kernel sees it.
#pragma once

#include <ATen/core/Tensor.h>

namespace hrnet_fast {

// Largest DARK Gaussian (its taps live in one block's shared memory on CUDA).
constexpr int kMaxBlurKernel = 255;

// One crop_normalize call: out[k, c, y, x] = sample(image, theta[k] (x, y, 1)) * scale[c] + shift[c].
struct CropArgs {
  at::Tensor image;  // [H, W, 3] uint8, dense (HWC)
  at::Tensor theta;  // [K, 2, 3] float32, dense: output (x, y, 1) -> input (x, y)
  at::Tensor out;    // [K, 3, out_h, out_w] fp32/fp16/bf16, dense NCHW, or NHWC when channels_last
  float scale[3];    // 1 / (255 std[c])
  float shift[3];    // -mean[c] / std[c]
  bool channels_last = false;
};

// One heatmap_decode call: out[k, j] = (x, y, score) in image pixels.
struct DecodeArgs {
  at::Tensor heatmaps;    // [K, J, h, w] fp32/fp16/bf16, dense
  at::Tensor flipped;     // like heatmaps, or undefined (no flip merge)
  at::Tensor flip_index;  // [J] int64 with flipped (entries in 0..J-1), else undefined
  at::Tensor centers;     // [K, 2] float32, dense
  at::Tensor scales;      // [K, 2] float32, dense: crop width and height in image pixels
  at::Tensor out;         // [K, J, 3] float32, dense
  bool dark = false;      // method "dark" (else "classic")
  bool shift_flipped = false;
  int blur_kernel = 11;   // dark's Gaussian size (odd, at most kMaxBlurKernel)
};

void crop_normalize_cpu(const CropArgs& args);
void heatmap_decode_cpu(const DecodeArgs& args);

#ifdef HRNET_FAST_WITH_CUDA
void crop_normalize_cuda(const CropArgs& args);
void heatmap_decode_cuda(const DecodeArgs& args);
#endif

}  // namespace hrnet_fast
