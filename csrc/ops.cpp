// The hrnet_fast_C operator library: schemas, strict input checks at the C++ boundary, and the CPU / CUDA
// kernel registrations. Python callers go through hrnet_fast.ops (which checks the same things first); these
// checks are for anyone calling torch.ops.hrnet_fast_C.* directly, they keep bad input away from kernels that
// index raw pointers, and the module's eager CPU entry point (module.cpp) uses them to decline calls.
#include "ops.h"

#include <ATen/ops/empty.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <string>

namespace hrnet_fast {
namespace {

// NHWC when x is channels_last and not also plain contiguous (the same rule as hrnet_fast/ops/library.py).
at::MemoryFormat output_format(const at::Tensor& x) {
  const bool channels_last = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

void check_float_4d(const char* op, const std::string& name, const at::Tensor& t, c10::DeviceType device) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be a 4-D (N, C, H, W) tensor, got shape ", t.sizes());
  TORCH_CHECK(is_supported_float(t.scalar_type()), op, ": ", name, " has dtype ", t.scalar_type(),
              "; supported dtypes are Float, Half and BFloat16");
  TORCH_CHECK(t.device().type() == device, op, ": ", name, " is on ", t.device(), " but this kernel runs on ",
              c10::DeviceTypeName(device), " tensors");
}

void check_like_x(const char* op, const std::string& name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but x has ",
              x.scalar_type(), "; all inputs must share one dtype");
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

void check_batch_and_channels(const char* op, const std::string& name, const at::Tensor& z, const at::Tensor& x) {
  TORCH_CHECK(z.size(0) == x.size(0) && z.size(1) == x.size(1), op, ": ", name, " has shape ", z.sizes(),
              "; batch and channels must match x ", x.sizes());
}

// log2 of the nearest-upsampling factor that brings z ([N, C, h, w]) to x ([N, C, H, W]), or a readable error.
int upsample_shift(const char* op, const std::string& name, const at::Tensor& z, const at::Tensor& x) {
  const int64_t H = x.size(2), W = x.size(3), h = z.size(2), w = z.size(3);
  const bool divides = h > 0 && w > 0 && H % h == 0 && W % w == 0 && H / h == W / w;
  const int64_t factor = divides ? H / h : 0;
  TORCH_CHECK(factor > 0 && (factor & (factor - 1)) == 0, op, ": ", name, " is ", h, "x", w, " and x is ", H, "x",
              W, "; low_res inputs must be smaller than x by one power-of-two factor in both dimensions");
  int shift = 0;
  while ((int64_t{1} << shift) < factor) ++shift;
  return shift;
}

// Bilinear upsampling takes any z ([N, C, h, w]) no larger than x ([N, C, H, W]) and not empty.
void check_bilinear_size(const char* op, const std::string& name, const at::Tensor& z, const at::Tensor& x) {
  const int64_t H = x.size(2), W = x.size(3), h = z.size(2), w = z.size(3);
  TORCH_CHECK(h > 0 && w > 0 && h <= H && w <= W, op, ": ", name, " is ", h, "x", w, " and x is ", H, "x", W,
              "; bilinear low_res inputs must be non-empty and no larger than x in either dimension");
}

Upsample parse_mode(const char* op, c10::string_view mode, bool align_corners) {
  TORCH_CHECK(mode == "nearest" || mode == "bilinear", op, ": mode must be 'nearest' or 'bilinear', got '",
              std::string(mode), "'");
  TORCH_CHECK(!align_corners || mode == "bilinear", op, ": align_corners=True only applies to mode='bilinear'");
  return mode == "bilinear" ? Upsample::kBilinear : Upsample::kNearest;
}

// Checks a conv_bn_act call; returns the memory format of its output (and of the dense inputs kernels get).
at::MemoryFormat check_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& residual, int64_t stride, int64_t padding,
                            c10::DeviceType device) {
  constexpr const char* op = "hrnet_fast_C::conv_bn_act";
  check_float_4d(op, "x", x, device);
  check_float_4d(op, "weight", weight, device);
  check_like_x(op, "weight", weight, x);
  const int64_t cout = weight.size(0), cin = weight.size(1), k = weight.size(2);
  TORCH_CHECK(weight.size(3) == k && (k == 1 || k == 3), op, ": weight must be a 1x1 or 3x3 kernel, got shape ",
              weight.sizes());
  TORCH_CHECK(x.size(1) == cin, op, ": x has ", x.size(1), " channels but weight expects ", cin, " (weight shape ",
              weight.sizes(), ", groups=1)");
  TORCH_CHECK(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK(padding >= 0 && padding <= k / 2, op, ": padding must be between 0 and ", k / 2, " for a ", k, "x",
              k, " kernel, got ", padding);
  if (bias.has_value()) {
    TORCH_CHECK(bias->defined() && bias->dim() == 1 && bias->size(0) == cout, op, ": bias must have shape (", cout,
                ",), got ", bias->defined() ? bias->sizes() : at::IntArrayRef{});
    check_like_x(op, "bias", *bias, x);
  }
  const int64_t ho = (x.size(2) + 2 * padding - k) / stride + 1, wo = (x.size(3) + 2 * padding - k) / stride + 1;
  TORCH_CHECK(x.size(2) + 2 * padding >= k && x.size(3) + 2 * padding >= k, op, ": input of spatial size ",
              x.sizes().slice(2), " is too small for a ", k, "x", k, " kernel with padding ", padding);
  if (residual.has_value()) {
    check_float_4d(op, "residual", *residual, device);
    check_like_x(op, "residual", *residual, x);
    const std::vector<int64_t> out_shape{x.size(0), cout, ho, wo};
    TORCH_CHECK(residual->sizes() == at::IntArrayRef(out_shape), op, ": residual has shape ", residual->sizes(),
                " but the conv output is ", at::IntArrayRef(out_shape));
  }
  return output_format(x);
}

using ConvKernel = at::Tensor (*)(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                  const std::optional<at::Tensor>&, int64_t, int64_t, bool, bool, at::MemoryFormat);

// Validates, lays every tensor out in x's memory format and runs `kernel`.
template <c10::DeviceType device, ConvKernel kernel>
at::Tensor conv_bn_act(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& residual, int64_t stride, int64_t padding, bool relu,
                       bool library_fused) {
  const at::MemoryFormat format = check_conv(x, weight, bias, residual, stride, padding, device);
  std::optional<at::Tensor> dense_bias, dense_residual;
  if (bias.has_value()) dense_bias = bias->contiguous();
  if (residual.has_value()) dense_residual = residual->contiguous(format);
  return kernel(x.contiguous(format), weight.contiguous(format), dense_bias, dense_residual, stride, padding, relu,
                library_fused, format);
}

template <c10::DeviceType device, void (*kernel)(const FuseArgs&)>
at::Tensor multires_fuse(const at::Tensor& x, at::TensorList low_res, at::TensorList same_res, bool relu,
                         c10::string_view mode, bool align_corners) {
  FuseArgs args = prepare_fuse(x, low_res, same_res, relu, mode, align_corners, device);
  if (args.out.numel() > 0) kernel(args);
  return args.out;
}

}  // namespace

FuseArgs prepare_fuse(const at::Tensor& x, at::TensorList low_res, at::TensorList same_res, bool relu,
                      c10::string_view mode, bool align_corners, c10::DeviceType device) {
  constexpr const char* op = "hrnet_fast_C::multires_fuse";
  const Upsample upsample = parse_mode(op, mode, align_corners);
  check_float_4d(op, "x", x, device);
  TORCH_CHECK(low_res.size() <= kMaxTerms && same_res.size() <= kMaxTerms, op, ": takes at most ", kMaxTerms,
              " low_res and ", kMaxTerms, " same_res inputs, got ", low_res.size(), " and ", same_res.size());
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, op, ": x has an empty spatial size ", x.sizes().slice(2));

  FuseArgs args;
  const at::MemoryFormat format = output_format(x);
  args.channels_last = format == at::MemoryFormat::ChannelsLast;
  args.relu = relu;
  args.mode = upsample;
  args.align_corners = align_corners;
  // Kernels index dense tensors, so strided views are copied into the output's format first (a no-op for
  // tensors already laid out that way).
  args.x = x.contiguous(format);
  for (size_t j = 0; j < low_res.size(); ++j) {
    const std::string name = "low_res[" + std::to_string(j) + "]";
    check_float_4d(op, name, low_res[j], device);
    check_like_x(op, name, low_res[j], x);
    check_batch_and_channels(op, name, low_res[j], x);
    if (upsample == Upsample::kNearest) {
      args.low_shift.push_back(upsample_shift(op, name, low_res[j], x));
    } else {
      check_bilinear_size(op, name, low_res[j], x);
    }
    args.low_res.push_back(low_res[j].contiguous(format));
  }
  for (size_t k = 0; k < same_res.size(); ++k) {
    const std::string name = "same_res[" + std::to_string(k) + "]";
    check_float_4d(op, name, same_res[k], device);
    check_like_x(op, name, same_res[k], x);
    TORCH_CHECK(same_res[k].sizes() == x.sizes(), op, ": ", name, " has shape ", same_res[k].sizes(),
                " but x has ", x.sizes());
    args.same_res.push_back(same_res[k].contiguous(format));
  }
  args.out = at::empty(x.sizes(), x.options().memory_format(format));
  return args;
}

}  // namespace hrnet_fast

TORCH_LIBRARY(hrnet_fast_C, m) {
  // library_fused: run the device's fused conv + bias (+ add) + ReLU library op where there is one (cuDNN on CUDA);
  // false: the convolution, then this library's epilogue kernel (what the CPU kernel always does).
  m.def("conv_bn_act(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, int stride, int padding, bool relu, "
        "bool library_fused=True) -> Tensor");
  m.def("multires_fuse(Tensor x, Tensor[] low_res, Tensor[] same_res, bool relu, str mode, bool align_corners) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(hrnet_fast_C, CPU, m) {
  using namespace hrnet_fast;
  m.impl("conv_bn_act", &conv_bn_act<c10::DeviceType::CPU, conv_bn_act_cpu>);
  m.impl("multires_fuse", &multires_fuse<c10::DeviceType::CPU, multires_fuse_cpu>);
}

#ifdef HRNET_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(hrnet_fast_C, CUDA, m) {
  using namespace hrnet_fast;
  m.impl("conv_bn_act", &conv_bn_act<c10::DeviceType::CUDA, conv_bn_act_cuda>);
  m.impl("multires_fuse", &multires_fuse<c10::DeviceType::CUDA, multires_fuse_cuda>);
}
#endif
