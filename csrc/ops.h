// Kernel entry points of the hrnet_fast_C library, shared by the registration (ops.cpp) and the per-device
// kernels (cpu/, cuda/). ops.cpp validates every input and lays it out before a kernel sees it, so kernels only
// deal with dense tensors in one memory format.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace hrnet_fast {

// At most this many low_res and this many same_res terms per multires_fuse call (kernel argument structs are
// fixed-size).
constexpr int kMaxTerms = 4;

// How low_res terms are brought to x's size: F.interpolate's "nearest" by a power-of-two factor, or its
// "bilinear" from any size up to x's (csrc/bilinear.h).
enum class Upsample { kNearest, kBilinear };

// One multires_fuse call, ready for a kernel: every tensor is dense in `out`'s memory format (NCHW, or NHWC
// when `channels_last`), on one device, in one dtype.
struct FuseArgs {
  at::Tensor x;                      // [N, C, H, W]
  at::Tensor bias;                   // [C] or undefined: added right after x (conv epilogues; CUDA kernel only)
  std::vector<at::Tensor> low_res;   // nearest: [N, C, H >> low_shift[j], W >> low_shift[j]]; bilinear:
                                     // [N, C, h_j <= H, w_j <= W]; up to kMaxTerms
  std::vector<int> low_shift;        // nearest: log2 of each low_res term's upsampling factor (empty for bilinear)
  Upsample mode = Upsample::kNearest;
  bool align_corners = false;        // bilinear only
  std::vector<at::Tensor> same_res;  // [N, C, H, W], up to kMaxTerms
  at::Tensor out;                    // [N, C, H, W], written once
  bool channels_last = false;
  bool relu = true;
};

// Checks a multires_fuse call (a c10::Error naming the problem when it is not one the kernels of `device` take)
// and lays it out for them: inputs made dense in x's memory format, the output allocated. Shared by the
// registered op (ops.cpp) and the module's eager entry point (module.cpp).
// `mode` is "nearest" or "bilinear"; align_corners=true only with "bilinear".
FuseArgs prepare_fuse(const at::Tensor& x, at::TensorList low_res, at::TensorList same_res, bool relu,
                      c10::string_view mode, bool align_corners, c10::DeviceType device);

// out = relu?(x + bias + sum_j up(low_res[j]) + sum_k same_res[k]), summed in fp32 in that order (bilinear: each
// term interpolated in fp32 from its four taps). `out` may be
// `x` itself (in-place epilogue).
void multires_fuse_cpu(const FuseArgs& args);

// relu?(conv2d(x, weight) + bias + residual) with x, weight and residual dense in `format`; returns [N, Cout, Ho, Wo]
// in `format`. `library_fused`: use the device library's fused conv+bias(+add)+ReLU where it has one (cuDNN; the
// CPU kernel has none and ignores it).
at::Tensor conv_bn_act_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& residual, int64_t stride, int64_t padding, bool relu,
                           bool library_fused, at::MemoryFormat format);

#ifdef HRNET_FAST_WITH_CUDA
void multires_fuse_cuda(const FuseArgs& args);

at::Tensor conv_bn_act_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& residual, int64_t stride, int64_t padding, bool relu,
                            bool library_fused, at::MemoryFormat format);
#endif

}  // namespace hrnet_fast
