// The segmentation ops of the hrnet_fast_C library (schemas, checks at the C++ boundary, CPU / CUDA
// registrations). Python callers go through hrnet_fast.segment.ops, which checks the same things first
// (hrnet_fast/ops/seg_checks.py); these checks are for direct torch.ops.hrnet_fast_C callers and keep bad input
// away from kernels that index raw pointers.
#include "seg_ops.h"

#include <ATen/ops/empty.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

namespace hrnet_fast {
namespace {

constexpr int64_t kUint8Classes = 256;

bool is_float(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

void check_device(const char* op, const char* name, const at::Tensor& t, c10::DeviceType device) {
  TORCH_CHECK(t.device().type() == device, op, ": ", name, " is on ", t.device(), " but this kernel runs on ",
              c10::DeviceTypeName(device), " tensors");
}

void check_three(const char* op, const char* name, at::ArrayRef<double> v) {
  TORCH_CHECK(v.size() == 3, op, ": ", name, " must hold 3 values (one per RGB channel), got ", v.size());
  for (double x : v) TORCH_CHECK(std::isfinite(x), op, ": ", name, " must be finite, got ", v);
}

template <c10::DeviceType device, void (*kernel)(const NormalizeArgs&)>
at::Tensor seg_normalize(const at::Tensor& images, at::ArrayRef<double> mean, at::ArrayRef<double> std,
                         at::ScalarType dtype, bool channels_last) {
  constexpr const char* op = "hrnet_fast_C::seg_normalize";
  TORCH_CHECK(images.defined(), op, ": images is an undefined tensor");
  TORCH_CHECK(images.dim() == 4 && images.size(3) == 3, op, ": images must be [N, H, W, 3], got shape ",
              images.sizes());
  TORCH_CHECK(images.scalar_type() == at::kByte, op, ": images must be uint8, got ", images.scalar_type());
  check_device(op, "images", images, device);
  check_three(op, "mean", mean);
  check_three(op, "std", std);
  for (double s : std) TORCH_CHECK(s != 0.0, op, ": std must not be 0, got ", std);
  TORCH_CHECK(is_float(dtype), op, ": dtype must be Float, Half or BFloat16, got ", dtype);
  NormalizeArgs args;
  args.images = images.contiguous();
  args.channels_last = channels_last;
  for (int c = 0; c < 3; ++c) {
    args.mean[c] = static_cast<float>(mean[c]);
    args.std[c] = static_cast<float>(std[c]);
  }
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  args.out = at::empty({images.size(0), 3, images.size(1), images.size(2)},
                       images.options().dtype(dtype).memory_format(format));
  if (args.out.numel() > 0) kernel(args);
  return args.out;
}

template <c10::DeviceType device, void (*kernel)(const ResizeArgmaxArgs&)>
std::tuple<at::Tensor, at::Tensor> resize_argmax(const at::Tensor& logits, int64_t out_h, int64_t out_w,
                                                 bool align_corners, bool with_prob, at::ScalarType out_dtype) {
  constexpr const char* op = "hrnet_fast_C::resize_argmax";
  TORCH_CHECK(logits.defined(), op, ": logits is an undefined tensor");
  TORCH_CHECK(logits.dim() == 4, op, ": logits must be a 4-D [N, C, h, w] tensor, got shape ", logits.sizes());
  TORCH_CHECK(is_float(logits.scalar_type()), op, ": logits must be Float, Half or BFloat16, got ",
              logits.scalar_type());
  check_device(op, "logits", logits, device);
  const int64_t classes = logits.size(1);
  TORCH_CHECK(classes > 0, op, ": logits must have at least one class, got shape ", logits.sizes());
  TORCH_CHECK(logits.size(2) > 0 && logits.size(3) > 0, op, ": logits has an empty spatial size ",
              logits.sizes().slice(2));
  TORCH_CHECK(out_h > 0 && out_w > 0, op, ": out_h and out_w must be positive, got ", out_h, "x", out_w);
  TORCH_CHECK(out_dtype == at::kByte || out_dtype == at::kLong, op, ": out_dtype must be Byte or Long, got ",
              out_dtype);
  TORCH_CHECK(out_dtype == at::kLong || classes <= kUint8Classes, op, ": uint8 labels hold 0..255, but logits has ",
              classes, " classes");
  ResizeArgmaxArgs args;
  // NHWC when logits is channels_last and not also plain contiguous; strided views are copied into that layout.
  args.channels_last = logits.is_contiguous(at::MemoryFormat::ChannelsLast) && !logits.is_contiguous();
  args.logits = logits.contiguous(args.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  args.align_corners = align_corners;
  args.with_prob = with_prob;
  args.labels = at::empty({logits.size(0), out_h, out_w}, logits.options().dtype(out_dtype));
  args.prob = at::empty(with_prob ? at::IntArrayRef{logits.size(0), out_h, out_w} : at::IntArrayRef{0},
                        logits.options().dtype(at::kFloat));
  if (args.labels.numel() > 0) kernel(args);
  return {args.labels, args.prob};
}

}  // namespace
}  // namespace hrnet_fast

TORCH_LIBRARY_FRAGMENT(hrnet_fast_C, m) {
  m.def("seg_normalize(Tensor images, float[] mean, float[] std, ScalarType dtype, bool channels_last) -> Tensor");
  m.def("resize_argmax(Tensor logits, int out_h, int out_w, bool align_corners, bool with_prob, "
        "ScalarType out_dtype) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(hrnet_fast_C, CPU, m) {
  using namespace hrnet_fast;
  m.impl("seg_normalize", &seg_normalize<c10::DeviceType::CPU, seg_normalize_cpu>);
  m.impl("resize_argmax", &resize_argmax<c10::DeviceType::CPU, resize_argmax_cpu>);
}

#ifdef HRNET_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(hrnet_fast_C, CUDA, m) {
  using namespace hrnet_fast;
  m.impl("seg_normalize", &seg_normalize<c10::DeviceType::CUDA, seg_normalize_cuda>);
  m.impl("resize_argmax", &resize_argmax<c10::DeviceType::CUDA, resize_argmax_cuda>);
}
#endif
