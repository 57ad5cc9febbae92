// CPU heatmap_decode: one pass per (box, joint) heatmap, the (box, joint) pairs split over OpenMP threads
// (at::parallel_for). Each pass merges the flipped crop's map on the fly (pose_math.h's flipped_column), finds the
// first maximum, refines it (classic quarter offset, or DARK's Taylor step) and maps it to the image; only the
// K x J x 3 results are written.
//
// DARK needs the blurred map B at the 13 stencil points around the peak only, each a k x k Gaussian sum of the
// merged map (as the separable reference computes it: a column sum per tap column, then their weighted sum). Where
// B >= kDarkNoClampFloor at all of them the log's clamp is inactive and the rescale cancels (pose_math.h), so
// L = log B there. Otherwise (negative or vanishing values near the peak) the whole blurred map is computed, its
// max taken, and L = log(max(B max(m) / max(B), 1e-10)) exactly as the reference does.
#include "pose_math.h"
#include "pose_ops.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace hrnet_fast {
namespace {

// Heatmap values per parallel task (a 64x48 map is 3072).
constexpr int64_t kGrainValues = 32768;

// L at the 13 stencil points around (py, px) (pose_math.h's order), given max(m) = score > 0.
template <typename T>
void dark_log(const pose::Merged<T>& m, const std::vector<float>& g, int64_t py, int64_t px, float score,
              float L[pose::kStencil]) {
  float b[pose::kStencil];
  bool clamp_free = true;
  for (int s = 0; s < pose::kStencil; ++s) {
    b[s] = pose::blur_at(m, g.data(), g.size(), py + pose::stencil_dy(s), px + pose::stencil_dx(s));
    clamp_free = clamp_free && b[s] >= pose::kDarkNoClampFloor;
  }
  if (clamp_free) {
    for (int s = 0; s < pose::kStencil; ++s) L[s] = std::log(b[s]);
    return;
  }
  float blur_max = -std::numeric_limits<float>::infinity();
  for (int64_t y = 0; y < m.h; ++y) {
    for (int64_t x = 0; x < m.w; ++x) blur_max = std::max(blur_max, pose::blur_at(m, g.data(), g.size(), y, x));
  }
  const float c = score / blur_max;
  for (int s = 0; s < pose::kStencil; ++s) {
    const float v = b[s] * c;
    L[s] = std::log(v < pose::kLogFloor ? pose::kLogFloor : v);  // NaN stays NaN, as torch.clamp_min keeps it
  }
}

template <typename T>
void decode_one(const DecodeArgs& a, const std::vector<float>& g, int64_t kj, float* out) {
  const int64_t J = a.heatmaps.size(1), h = a.heatmaps.size(2), w = a.heatmaps.size(3);
  const int64_t k = kj / J, j = kj % J;
  const T* fl = nullptr;
  if (a.flipped.defined()) {
    fl = a.flipped.const_data_ptr<T>() + (k * J + a.flip_index.const_data_ptr<int64_t>()[j]) * h * w;
  }
  const pose::Merged<T> m{a.heatmaps.const_data_ptr<T>() + kj * h * w, fl, h, w, a.shift_flipped};

  float best = -std::numeric_limits<float>::infinity();
  int64_t best_index = 0;
  bool nan = false;
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      const float v = m.at(y, x);
      if (v > best) {  // strictly greater: the first maximum in row-major order wins a tie
        best = v;
        best_index = y * w + x;
      }
      nan = nan || std::isnan(v);
    }
  }
  float* o = out + kj * 3;
  if (nan) {
    o[0] = o[1] = o[2] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  const int64_t px = best_index % w, py = best_index / w;
  float x = 0.f, y = 0.f;
  if (best > 0.f) {
    x = static_cast<float>(px);
    y = static_cast<float>(py);
    if (!a.dark) {
      if (px > 1 && px < w - 1 && py > 1 && py < h - 1) {
        x += 0.25f * pose::sign_of(m.at(py, px + 1) - m.at(py, px - 1));
        y += 0.25f * pose::sign_of(m.at(py + 1, px) - m.at(py - 1, px));
      }
    } else if (px > 1 && px < w - 2 && py > 1 && py < h - 2) {
      float L[pose::kStencil], ox, oy;
      dark_log(m, g, py, px, best, L);
      if (pose::dark_offset(L, &ox, &oy)) {
        x -= ox;
        y -= oy;
      }
    }
  }
  const float* center = a.centers.const_data_ptr<float>() + k * 2;
  const float* scale = a.scales.const_data_ptr<float>() + k * 2;
  pose::to_image(x, y, w, h, center[0], center[1], scale[0], scale[1], &o[0], &o[1]);
  o[2] = best;
}

}  // namespace

void heatmap_decode_cpu(const DecodeArgs& args) {
  std::vector<float> g;
  if (args.dark) {
    double sum = 0.0;
    for (int i = 0; i < args.blur_kernel; ++i) sum += pose::gaussian_weight(args.blur_kernel, i);
    for (int i = 0; i < args.blur_kernel; ++i) g.push_back(pose::gaussian_tap(args.blur_kernel, i, sum));
  }
  const int64_t pairs = args.heatmaps.size(0) * args.heatmaps.size(1);
  const int64_t grain = std::max<int64_t>(1, kGrainValues / (args.heatmaps.size(2) * args.heatmaps.size(3)));
  float* out = args.out.mutable_data_ptr<float>();
  const auto dtype = args.heatmaps.scalar_type();
  at::parallel_for(0, pairs, grain, [&](int64_t begin, int64_t end) {
    for (int64_t kj = begin; kj < end; ++kj) {
      if (dtype == at::kHalf) {
        decode_one<c10::Half>(args, g, kj, out);
      } else if (dtype == at::kBFloat16) {
        decode_one<c10::BFloat16>(args, g, kj, out);
      } else {
        decode_one<float>(args, g, kj, out);
      }
    }
  });
}

}  // namespace hrnet_fast
