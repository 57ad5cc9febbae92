// CUDA conv_bn_act: relu?(conv2d(x, weight) + bias + residual).
//
// With ReLU (every HRNet conv that is not a branch's last one) and `library_fused`, this is cuDNN's fused
// convolution + bias (+ residual) + ReLU, reached through ATen: at::cudnn_convolution_relu /
// at::cudnn_convolution_add_relu run one cuDNN fused operation (a conv-bias-add-activation graph) instead of a
// convolution followed by element-wise kernels, and this is the baseline a hand-written implicit-GEMM kernel has
// to beat. cuDNN has no engine for some problems (it throws); the caller decides per problem once and passes
// `library_fused` = false for those (hrnet_fast/ops/cuda_conv.py). ATen exposes that fused operation only with
// ReLU, so without ReLU, with cuDNN disabled or with `library_fused` false, the conv runs through
// at::convolution without its bias, followed by one in-place epilogue kernel (bias + residual [+ ReLU]: the
// multires_fuse kernel with a per-channel bias) instead of ATen's separate bias add and residual add. Every
// launch goes to x's device and that device's current stream (the guard below; ATen and the epilogue read both).
#include "ops.h"

#include <ATen/Context.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/cudnn_convolution_add_relu.h>
#include <ATen/ops/cudnn_convolution_relu.h>
#include <c10/cuda/CUDAGuard.h>

namespace hrnet_fast {

at::Tensor conv_bn_act_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& residual, int64_t stride, int64_t padding, bool relu,
                            bool library_fused, at::MemoryFormat format) {
  const c10::cuda::CUDAGuard guard(x.device());
  const std::vector<int64_t> strides{stride, stride}, paddings{padding, padding}, dilation{1, 1};
  if (relu && library_fused && at::globalContext().userEnabledCuDNN() && at::Context::hasCuDNN()) {
    // Both pick channels_last output when x (and so weight) is channels_last; `format` keeps that explicit.
    at::Tensor y = residual.has_value()
                       ? at::cudnn_convolution_add_relu(x, weight, *residual, /*alpha=*/at::Scalar(1.0), bias, strides,
                                                        paddings, dilation, /*groups=*/1)
                       : at::cudnn_convolution_relu(x, weight, bias, strides, paddings, dilation, /*groups=*/1);
    return y.contiguous(format);
  }
  at::Tensor y = at::convolution(x, weight, /*bias=*/std::nullopt, strides, paddings, dilation, /*transposed=*/false,
                                 /*output_padding=*/{0, 0}, /*groups=*/1)
                     .contiguous(format);
  if (y.numel() == 0 || (!bias.has_value() && !residual.has_value() && !relu)) return y;
  FuseArgs epilogue;
  epilogue.x = y;
  epilogue.out = y;  // in place: every thread reads its elements before writing them
  if (bias.has_value()) epilogue.bias = *bias;
  if (residual.has_value()) epilogue.same_res.push_back(*residual);
  epilogue.channels_last = format == at::MemoryFormat::ChannelsLast;
  epilogue.relu = relu;
  multires_fuse_cuda(epilogue);
  return y;
}

}  // namespace hrnet_fast
