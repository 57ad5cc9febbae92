// The pose ops of the hrnet_fast_C library: schemas, strict input checks at the C++ boundary, and the CPU / CUDA
// kernel registrations. Python callers go through hrnet_fast.pose.ops (hrnet_fast/ops/pose_checks.py checks the
// same things first, and NaN / infinite boxes); these checks are for anyone calling torch.ops.hrnet_fast_C.*
// directly, and keep bad input away from kernels that index raw pointers.
#include "pose_ops.h"

#include <ATen/ops/empty.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <optional>
#include <string>

namespace hrnet_fast {
namespace {

constexpr const char* kCrop = "hrnet_fast_C::crop_normalize";
constexpr const char* kDecode = "hrnet_fast_C::heatmap_decode";

bool is_supported_float(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

void check_device(const char* op, const char* name, const at::Tensor& t, c10::DeviceType device) {
  TORCH_CHECK(t.device().type() == device, op, ": ", name, " is on ", t.device(), " but this kernel runs on ",
              c10::DeviceTypeName(device), " tensors");
}

CropArgs prepare_crop(const at::Tensor& image, const at::Tensor& theta, int64_t out_h, int64_t out_w,
                      at::ArrayRef<double> mean, at::ArrayRef<double> std, at::ScalarType dtype, bool channels_last,
                      c10::DeviceType device) {
  TORCH_CHECK(image.defined() && theta.defined(), kCrop, ": image and theta must be defined tensors");
  TORCH_CHECK(image.scalar_type() == at::kByte, kCrop, ": image must be uint8, got ", image.scalar_type());
  TORCH_CHECK(image.dim() == 3 && image.size(2) == 3, kCrop, ": image must be [H, W, 3] (HWC, RGB), got shape ",
              image.sizes());
  TORCH_CHECK(image.size(0) > 0 && image.size(1) > 0, kCrop, ": image is empty: shape ", image.sizes());
  TORCH_CHECK(theta.dim() == 3 && theta.size(1) == 2 && theta.size(2) == 3, kCrop,
              ": theta must be [K, 2, 3], got shape ", theta.sizes());
  TORCH_CHECK(theta.scalar_type() == at::kFloat, kCrop, ": theta must be float32, got ", theta.scalar_type());
  check_device(kCrop, "image", image, device);
  TORCH_CHECK(theta.device() == image.device(), kCrop, ": theta is on ", theta.device(), " but image is on ",
              image.device());
  TORCH_CHECK(out_h > 0 && out_w > 0, kCrop, ": out_h and out_w must be positive, got ", out_h, " and ", out_w);
  TORCH_CHECK(mean.size() == 3 && std.size() == 3, kCrop, ": mean and std take 3 values (RGB), got ", mean.size(),
              " and ", std.size());
  TORCH_CHECK(is_supported_float(dtype), kCrop, ": dtype must be Float, Half or BFloat16, got ", dtype);
  CropArgs args;
  for (int c = 0; c < 3; ++c) {
    TORCH_CHECK(std[c] != 0.0, kCrop, ": std[", c, "] is 0");
    args.scale[c] = static_cast<float>(1.0 / (255.0 * std[c]));
    args.shift[c] = static_cast<float>(-mean[c] / std[c]);
  }
  args.image = image.contiguous();
  args.theta = theta.contiguous();
  args.channels_last = channels_last;
  args.out = at::empty({theta.size(0), 3, out_h, out_w},
                       image.options().dtype(dtype).memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                                : at::MemoryFormat::Contiguous));
  return args;
}

void check_pairs(const char* name, const at::Tensor& t, const at::Tensor& heatmaps) {
  TORCH_CHECK(t.defined() && t.dim() == 2 && t.size(0) == heatmaps.size(0) && t.size(1) == 2, kDecode, ": ", name,
              " must be [K, 2] with K = ", heatmaps.size(0), ", got shape ", t.defined() ? t.sizes() : at::IntArrayRef{});
  TORCH_CHECK(t.scalar_type() == at::kFloat, kDecode, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.device() == heatmaps.device(), kDecode, ": ", name, " is on ", t.device(), " but heatmaps are on ",
              heatmaps.device());
}

DecodeArgs prepare_decode(const at::Tensor& heatmaps, const at::Tensor& centers, const at::Tensor& scales,
                          c10::string_view method, const std::optional<at::Tensor>& flipped,
                          const std::optional<at::Tensor>& flip_index, bool shift_flipped, int64_t blur_kernel,
                          c10::DeviceType device) {
  TORCH_CHECK(heatmaps.defined() && heatmaps.dim() == 4, kDecode, ": heatmaps must be a 4-D [K, J, h, w] tensor");
  TORCH_CHECK(is_supported_float(heatmaps.scalar_type()), kDecode, ": heatmaps must be Float, Half or BFloat16, got ",
              heatmaps.scalar_type());
  TORCH_CHECK(heatmaps.size(2) > 0 && heatmaps.size(3) > 0, kDecode, ": heatmaps have an empty spatial size ",
              heatmaps.sizes().slice(2));
  check_device(kDecode, "heatmaps", heatmaps, device);
  check_pairs("centers", centers, heatmaps);
  check_pairs("scales", scales, heatmaps);
  TORCH_CHECK(method == "classic" || method == "dark", kDecode, ": method must be 'classic' or 'dark', got '",
              std::string(method), "'");
  TORCH_CHECK(blur_kernel > 0 && blur_kernel % 2 == 1 && blur_kernel <= kMaxBlurKernel, kDecode,
              ": blur_kernel must be an odd size from 1 to ", kMaxBlurKernel, ", got ", blur_kernel);
  DecodeArgs args;
  const bool has_flipped = flipped.has_value() && flipped->defined();
  if (has_flipped) {
    TORCH_CHECK(flipped->sizes() == heatmaps.sizes() && flipped->scalar_type() == heatmaps.scalar_type() &&
                    flipped->device() == heatmaps.device(),
                kDecode, ": flipped must match heatmaps in shape, dtype and device");
    TORCH_CHECK(flip_index.has_value() && flip_index->defined(), kDecode, ": flipped needs flip_index");
    TORCH_CHECK(flip_index->dim() == 1 && flip_index->size(0) == heatmaps.size(1) &&
                    flip_index->scalar_type() == at::kLong && flip_index->device() == heatmaps.device(),
                kDecode, ": flip_index must be an int64 [J] tensor on the heatmaps' device (J = ", heatmaps.size(1),
                ")");
    args.flipped = flipped->contiguous();
    args.flip_index = flip_index->contiguous();
    if (device == c10::DeviceType::CPU && args.flip_index.numel() > 0) {
      // The CUDA kernel guards each entry itself (an entry out of range decodes to NaN), sparing a device sync.
      const int64_t lo = args.flip_index.min().item<int64_t>(), hi = args.flip_index.max().item<int64_t>();
      TORCH_CHECK(lo >= 0 && hi < heatmaps.size(1), kDecode, ": flip_index entries must lie in 0..",
                  heatmaps.size(1) - 1, ", got ", lo, "..", hi);
    }
  }
  args.heatmaps = heatmaps.contiguous();
  args.centers = centers.contiguous();
  args.scales = scales.contiguous();
  args.dark = method == "dark";
  args.shift_flipped = shift_flipped;
  args.blur_kernel = static_cast<int>(blur_kernel);
  args.out = at::empty({heatmaps.size(0), heatmaps.size(1), 3}, heatmaps.options().dtype(at::kFloat));
  return args;
}

template <c10::DeviceType device, void (*kernel)(const CropArgs&)>
at::Tensor crop_normalize(const at::Tensor& image, const at::Tensor& theta, int64_t out_h, int64_t out_w,
                          at::ArrayRef<double> mean, at::ArrayRef<double> std, at::ScalarType dtype,
                          bool channels_last) {
  const CropArgs args = prepare_crop(image, theta, out_h, out_w, mean, std, dtype, channels_last, device);
  if (args.out.numel() > 0) kernel(args);
  return args.out;
}

template <c10::DeviceType device, void (*kernel)(const DecodeArgs&)>
at::Tensor heatmap_decode(const at::Tensor& heatmaps, const at::Tensor& centers, const at::Tensor& scales,
                          c10::string_view method, const std::optional<at::Tensor>& flipped,
                          const std::optional<at::Tensor>& flip_index, bool shift_flipped, int64_t blur_kernel) {
  const DecodeArgs args = prepare_decode(heatmaps, centers, scales, method, flipped, flip_index, shift_flipped,
                                         blur_kernel, device);
  if (args.out.numel() > 0) kernel(args);
  return args.out;
}

}  // namespace
}  // namespace hrnet_fast

TORCH_LIBRARY_FRAGMENT(hrnet_fast_C, m) {
  m.def("crop_normalize(Tensor image, Tensor theta, int out_h, int out_w, float[] mean, float[] std, "
        "ScalarType dtype, bool channels_last) -> Tensor");
  m.def("heatmap_decode(Tensor heatmaps, Tensor centers, Tensor scales, str method, Tensor? flipped, "
        "Tensor? flip_index, bool shift_flipped, int blur_kernel) -> Tensor");
}

TORCH_LIBRARY_IMPL(hrnet_fast_C, CPU, m) {
  using namespace hrnet_fast;
  m.impl("crop_normalize", &crop_normalize<c10::DeviceType::CPU, crop_normalize_cpu>);
  m.impl("heatmap_decode", &heatmap_decode<c10::DeviceType::CPU, heatmap_decode_cpu>);
}

#ifdef HRNET_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(hrnet_fast_C, CUDA, m) {
  using namespace hrnet_fast;
  m.impl("crop_normalize", &crop_normalize<c10::DeviceType::CUDA, crop_normalize_cuda>);
  m.impl("heatmap_decode", &heatmap_decode<c10::DeviceType::CUDA, heatmap_decode_cuda>);
}
#endif
