// CPU crop_normalize: every output pixel of every box reads its 4 taps x 3 channels of the uint8 HWC image once,
// blends them in fp32 (pose_math.h's sample_rgb), normalises and writes the 3 channels; nothing else is
// materialised. Rows of all boxes (K * out_h) are split over OpenMP threads (at::parallel_for).
#include "dispatch.h"
#include "pose_math.h"
#include "pose_ops.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

namespace hrnet_fast {
namespace {

// Output pixels per parallel task: below about this, waking a second thread costs more than it saves.
constexpr int64_t kGrainPixels = 8192;

template <typename T>
void crop_rows(const CropArgs& a, const uint8_t* image,  // [H, W, 3]
               const float* theta,                       // [K, 2, 3]
               T* out,                                   // [K, 3, out_h, out_w] (NCHW) or [K, out_h, out_w, 3]
               int64_t begin, int64_t end) {
  const int64_t H = a.image.size(0), W = a.image.size(1);
  const int64_t out_h = a.out.size(2), out_w = a.out.size(3), plane = out_h * out_w;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t k = row / out_h, y = row % out_h;
    const float* t = theta + k * 6;
    const float yf = static_cast<float>(y);
    // x_in = (t0 x + t1 y) + t2, y_in = (t3 x + t4 y) + t5: the reference's order of operations.
    const float ty0 = t[1] * yf, ty1 = t[4] * yf;
    for (int64_t x = 0; x < out_w; ++x) {
      const float xf = static_cast<float>(x);
      float v[3];
      pose::sample_rgb(image, H, W, t[0] * xf + ty0 + t[2], t[3] * xf + ty1 + t[5], v);
      if (a.channels_last) {
        T* o = out + (row * out_w + x) * 3;
        for (int c = 0; c < 3; ++c) o[c] = static_cast<T>(v[c] * a.scale[c] + a.shift[c]);
      } else {
        T* o = out + k * 3 * plane + y * out_w + x;
        for (int c = 0; c < 3; ++c) o[c * plane] = static_cast<T>(v[c] * a.scale[c] + a.shift[c]);
      }
    }
  }
}

}  // namespace

void crop_normalize_cpu(const CropArgs& args) {
  const int64_t rows = args.out.size(0) * args.out.size(2);
  const int64_t grain = std::max<int64_t>(1, kGrainPixels / args.out.size(3));
  HRNET_FAST_DISPATCH_FLOAT_TYPES(args.out.scalar_type(), "crop_normalize_cpu", [&] {
    const uint8_t* image = args.image.const_data_ptr<uint8_t>();
    const float* theta = args.theta.const_data_ptr<float>();
    scalar_t* out = args.out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      crop_rows<scalar_t>(args, image, theta, out, begin, end);
    });
  });
}

}  // namespace hrnet_fast
