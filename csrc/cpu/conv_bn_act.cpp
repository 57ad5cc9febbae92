// CPU conv_bn_act for callers of torch.ops.hrnet_fast_C.conv_bn_act: ATen's convolution (oneDNN, bias added in
// its accumulator) followed by one in-place pass for + residual and ReLU, which is multires_fuse with a single
// same-resolution term. hrnet_fast's own CPU backend runs oneDNN's fused post-op convolution instead
// (hrnet_fast/ops/cpu_conv.py), which also fuses that last pass; this kernel keeps the native op complete on CPU.
#include "ops.h"

#include <ATen/ops/convolution.h>

namespace hrnet_fast {

at::Tensor conv_bn_act_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& residual, int64_t stride, int64_t padding, bool relu,
                           bool /*library_fused: no fused library op on CPU*/, at::MemoryFormat format) {
  // ATen's fp16/bf16 convolution returns its result rounded to that dtype (natively on AVX512-FP16/AMX CPUs,
  // through its generic kernel elsewhere), so a residual added afterwards would follow a rounded convolution
  // (fp16: conv 8e4 -> inf before - 6e4). With a residual, reduced precision computes in fp32 and rounds once.
  // Without one the rounding is already the last step: bias is inside ATen's accumulator, ReLU commutes with it.
  const bool widen = residual.has_value() && x.scalar_type() != at::kFloat;
  const auto compute = [&](const at::Tensor& t) { return widen ? t.to(at::kFloat) : t; };
  std::optional<at::Tensor> compute_bias;
  if (bias.has_value()) compute_bias = compute(*bias);
  at::Tensor y = at::convolution(compute(x), compute(weight), compute_bias, {stride, stride}, {padding, padding},
                                 {1, 1}, /*transposed=*/false, {0, 0}, /*groups=*/1)
                     .contiguous(format);
  if (y.numel() == 0 || (!residual.has_value() && !relu)) return widen ? y.to(x.scalar_type()) : y;
  FuseArgs epilogue;
  epilogue.x = y;
  epilogue.out = y;  // in place: every vector is read before it is written (cpu/fuse_kernel.h)
  if (residual.has_value()) epilogue.same_res.push_back(compute(*residual).contiguous(format));
  epilogue.channels_last = format == at::MemoryFormat::ChannelsLast;
  epilogue.relu = relu;
  multires_fuse_cpu(epilogue);
  return widen ? y.to(x.scalar_type()) : y;
}

}  // namespace hrnet_fast
