// CPU seg_normalize: out[n, c, h, w] = (images[n, h, w, c] / 255 - mean[c]) / std[c] in one pass.
//
// A uint8 channel has 256 values, so the whole map is a 3 x 256 table of output values, computed per call in fp32
// exactly as the reference computes each element (divide by 255, subtract, divide) and rounded once to the output
// dtype: fp32 results equal the reference bit for bit, and the pass is a byte load and a table load per element.
// Pixels are split over OpenMP threads (at::parallel_for); NHWC output follows the input's order, NCHW output
// writes three planes.
#include "dispatch.h"
#include "seg_ops.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

namespace hrnet_fast {
namespace {

// Pixels per parallel task: below about this, waking a second thread costs more than it saves.
constexpr int64_t kGrainPixels = 16384;

template <typename T>
void normalize(const NormalizeArgs& a) {
  T table[3][256];
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) table[c][v] = static_cast<T>((static_cast<float>(v) / 255.f - a.mean[c]) / a.std[c]);
  }
  const uint8_t* images = a.images.const_data_ptr<uint8_t>();  // [N, H, W, 3]
  T* out = a.out.mutable_data_ptr<T>();                        // [N, 3, H, W] or [N, H, W, 3]
  const int64_t plane = a.images.size(1) * a.images.size(2);
  const int64_t pixels = a.images.size(0) * plane;
  at::parallel_for(0, pixels, kGrainPixels, [&](int64_t begin, int64_t end) {
    if (a.channels_last) {
      for (int64_t p = begin; p < end; ++p) {
        for (int c = 0; c < 3; ++c) out[3 * p + c] = table[c][images[3 * p + c]];
      }
      return;
    }
    // Image by image, so the plane offsets are computed once per run of pixels.
    for (int64_t p = begin; p < end;) {
      const int64_t n = p / plane, first = p - n * plane, count = std::min(end - p, plane - first);
      const uint8_t* src = images + 3 * p;
      T* r = out + 3 * n * plane + first;
      T* g = r + plane;
      T* b = g + plane;
      for (int64_t i = 0; i < count; ++i) {
        r[i] = table[0][src[3 * i]];
        g[i] = table[1][src[3 * i + 1]];
        b[i] = table[2][src[3 * i + 2]];
      }
      p += count;
    }
  });
}

}  // namespace

void seg_normalize_cpu(const NormalizeArgs& args) {
  HRNET_FAST_DISPATCH_FLOAT_TYPES(args.out.scalar_type(), "seg_normalize_cpu", [&] { normalize<scalar_t>(args); });
}

}  // namespace hrnet_fast
