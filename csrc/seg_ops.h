// Kernel entry points of the segmentation ops (seg_normalize, resize_argmax), shared by their registration
// (seg_ops.cpp) and the per-device kernels (cpu/, cuda/). seg_ops.cpp validates every input and lays it out
// before a kernel sees it, so kernels only deal with dense tensors in one memory format.
#pragma once

#include <ATen/core/Tensor.h>

namespace hrnet_fast {

// out[n, c, h, w] = (images[n, h, w, c] / 255 - mean[c]) / std[c], computed in fp32 and rounded once.
struct NormalizeArgs {
  at::Tensor images;   // [N, H, W, 3] uint8, dense
  at::Tensor out;      // [N, 3, H, W] float32/float16/bfloat16, dense NCHW, or NHWC when channels_last
  float mean[3];
  float std[3];
  bool channels_last = false;
};

// labels[n, y, x] = argmax_c of logits[n, c] bilinearly resized to (out_h, out_w) (csrc/bilinear.h, fp32),
// the first maximum on ties and a NaN counting as the maximum (torch.argmax); prob[n, y, x] =
// 1 / sum_c exp(l_c - l_max) when with_prob.
struct ResizeArgmaxArgs {
  at::Tensor logits;   // [N, C, h, w] float32/float16/bfloat16, dense NCHW, or NHWC when channels_last
  at::Tensor labels;   // [N, out_h, out_w] uint8 (C <= 256) or int64, dense
  at::Tensor prob;     // [N, out_h, out_w] float32, dense; only when with_prob
  bool channels_last = false;
  bool align_corners = false;
  bool with_prob = false;
};

void seg_normalize_cpu(const NormalizeArgs& args);
void resize_argmax_cpu(const ResizeArgmaxArgs& args);

#ifdef HRNET_FAST_WITH_CUDA
void seg_normalize_cuda(const NormalizeArgs& args);
void resize_argmax_cuda(const ResizeArgmaxArgs& args);
#endif

}  // namespace hrnet_fast
