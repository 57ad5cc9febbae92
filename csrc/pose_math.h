// The arithmetic of the pose ops, one definition for the CPU and CUDA kernels (the Python reference,
// hrnet_fast/ops/pose_reference.py, spells out the same formulas; the Triton kernels follow them too).
//
// crop_normalize: bilinear sampling of an RGB uint8 image with a constant-zero border.
// heatmap_decode: the flip-merged heatmap value, the classic quarter offset, DARK's Taylor step and the map back
// to image pixels.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define HRNET_FAST_POSE_HD __host__ __device__ __forceinline__
#else
#define HRNET_FAST_POSE_HD inline
#endif

namespace hrnet_fast {
namespace pose {

// ------------------------------------------------------------------------------------------ crop_normalize

// One bilinear sample of image ([H, W, 3] uint8, dense) at input pixel coordinates (xi, yi), per channel, on the
// 0..255 scale: v = (1 - fy) top + fy bottom, top/bottom = (1 - fx) left + fx right, where a tap outside the image
// contributes nothing. Validity is decided on the float coordinates, so an enormous or infinite coordinate never
// becomes an index (and its NaN weight is never used).
HRNET_FAST_POSE_HD void sample_rgb(const uint8_t* image, int64_t H, int64_t W, float xi, float yi, float v[3]) {
  const float x0 = floorf(xi), y0 = floorf(yi);
  const float fx = xi - x0, fy = yi - y0;
  const float w_last = static_cast<float>(W - 1), h_last = static_cast<float>(H - 1);
  const bool c0 = x0 >= 0.f && x0 <= w_last, c1 = x0 + 1.f >= 0.f && x0 + 1.f <= w_last;
  const bool r0 = y0 >= 0.f && y0 <= h_last, r1 = y0 + 1.f >= 0.f && y0 + 1.f <= h_last;
  if (c0 && c1 && r0 && r1) {  // all four taps inside (most pixels of most crops): the same sums, no selects
    const uint8_t* p = image + (static_cast<int64_t>(y0) * W + static_cast<int64_t>(x0)) * 3;
    for (int c = 0; c < 3; ++c) {
      const float t = (1.f - fx) * static_cast<float>(p[c]) + fx * static_cast<float>(p[3 + c]);
      const float b = (1.f - fx) * static_cast<float>(p[W * 3 + c]) + fx * static_cast<float>(p[W * 3 + 3 + c]);
      v[c] = (1.f - fy) * t + fy * b;
    }
    return;
  }
  const int64_t col0 = c0 ? static_cast<int64_t>(x0) : 0, col1 = c1 ? static_cast<int64_t>(x0 + 1.f) : 0;
  const int64_t row0 = r0 ? static_cast<int64_t>(y0) : 0, row1 = r1 ? static_cast<int64_t>(y0 + 1.f) : 0;
  const uint8_t* top = image + row0 * W * 3;
  const uint8_t* bottom = image + row1 * W * 3;
  for (int c = 0; c < 3; ++c) {
    float t = 0.f, b = 0.f;
    if (r0) {
      t = (c0 ? (1.f - fx) * static_cast<float>(top[col0 * 3 + c]) : 0.f) +
          (c1 ? fx * static_cast<float>(top[col1 * 3 + c]) : 0.f);
    }
    if (r1) {
      b = (c0 ? (1.f - fx) * static_cast<float>(bottom[col0 * 3 + c]) : 0.f) +
          (c1 ? fx * static_cast<float>(bottom[col1 * 3 + c]) : 0.f);
    }
    v[c] = (r0 ? (1.f - fy) * t : 0.f) + (r1 ? fy * b : 0.f);
  }
}

// ------------------------------------------------------------------------------------------ heatmap_decode

// Column of the flipped crop's heatmap that lands on column x of the merged map: flipped back (w - 1 - x), and with
// shift_flipped moved right by one pixel, column 0 keeping its own value (w - x for x >= 1, w - 1 for x = 0).
HRNET_FAST_POSE_HD int64_t flipped_column(int64_t x, int64_t w, bool shift) {
  return shift ? (x == 0 ? w - 1 : w - x) : w - 1 - x;
}

// One merged heatmap m (h x w): the crop's map, or its mean with the flipped crop's map flipped back (and shifted).
template <typename T>
struct Merged {
  const T* hm;  // [h, w]
  const T* fl;  // [h, w] of the flipped crop's joint flip_index[j], or nullptr
  int64_t h, w;
  bool shift;

  HRNET_FAST_POSE_HD float at(int64_t y, int64_t x) const {
    const float v = static_cast<float>(hm[y * w + x]);
    if (fl == nullptr) return v;
    return (v + static_cast<float>(fl[y * w + flipped_column(x, w, shift)])) / 2.f;
  }
};

// The blurred map at (y, x) for the k Gaussian taps g ([k]): over tap columns b, g[b] times the column sum over tap
// rows a of g[a] m (the separable reference's order: vertical pass, then horizontal), taps outside the map
// skipped (zero padding).
template <typename T>
HRNET_FAST_POSE_HD float blur_at(const Merged<T>& m, const float* g, int64_t k, int64_t y, int64_t x) {
  const int64_t r = (k - 1) / 2;
  const int64_t b_end = k < m.w - x + r ? k : m.w - x + r, a_end = k < m.h - y + r ? k : m.h - y + r;
  float acc = 0.f;
  for (int64_t b = r - x > 0 ? r - x : 0; b < b_end; ++b) {
    float column = 0.f;
    for (int64_t a = r - y > 0 ? r - y : 0; a < a_end; ++a) column += g[a] * m.at(y + a - r, x + b - r);
    acc += g[b] * column;
  }
  return acc;
}

// torch.sign, NaN kept: +1, -1, or d itself (+-0, NaN).
HRNET_FAST_POSE_HD float sign_of(float d) { return d > 0.f ? 1.f : (d < 0.f ? -1.f : d); }

// Merged-map values where the DARK step reads the log map, as (dy, dx) from the peak; the order fixes the
// meaning of L[] in dark_offset: centre, x+1, x-1, y+1, y-1, x+2, x-2, y+2, y-2, (y+1, x+1), (y-1, x+1),
// (y+1, x-1), (y-1, x-1).
// (Functions rather than arrays: a constexpr array indexed at run time is not visible in CUDA device code.)
constexpr int kStencil = 13;
HRNET_FAST_POSE_HD int stencil_dy(int s) {
  switch (s) {
    case 3: case 9: case 11: return 1;
    case 4: case 10: case 12: return -1;
    case 7: return 2;
    case 8: return -2;
    default: return 0;
  }
}
HRNET_FAST_POSE_HD int stencil_dx(int s) {
  switch (s) {
    case 1: case 9: case 10: return 1;
    case 2: case 11: case 12: return -1;
    case 5: return 2;
    case 6: return -2;
    default: return 0;
  }
}

// DARK's clamp of the rescaled blurred map before its log.
constexpr float kLogFloor = 1e-10f;
// The blurred map B is rescaled by c = max(m) / max(B) before the clamp. With max(m) > 0, max(B) <= max(m) (the
// Gaussian's taps are non-negative, sum to 1, and the zero padding only removes mass), so c >= 1 up to the
// blur's rounding (far below a factor 2). Where B >= 2e-10 at all 13 stencil points, c B >= 1e-10 there: the
// clamp does nothing and log(c B) = log c + log B, whose constant log c cancels in every difference the DARK step
// takes. So the kernels take log B there and need neither max(B) nor the rest of the blurred map.
constexpr float kDarkNoClampFloor = 2e-10f;

// Sum of DARK's unnormalised Gaussian taps exp(-d^2 / (2 sigma^2)), d = -r..r, r = (k - 1) / 2,
// sigma = 0.3 ((k - 1) / 2 - 1) + 0.8, in double (as hrnet_fast/ops/pose_reference.py's gaussian_taps).
HRNET_FAST_POSE_HD double gaussian_sigma(int k) { return 0.3 * ((k - 1) * 0.5 - 1.0) + 0.8; }

HRNET_FAST_POSE_HD double gaussian_weight(int k, int i) {
  const double sigma = gaussian_sigma(k), d = static_cast<double>(i - (k - 1) / 2);
  return exp(-d * d / (2.0 * sigma * sigma));
}

// Tap i of the normalised Gaussian, rounded once to float; `sum` is the sum of gaussian_weight over the k taps.
HRNET_FAST_POSE_HD float gaussian_tap(int k, int i, double sum) {
  return static_cast<float>(gaussian_weight(k, i) / sum);
}

// DARK's Taylor step from the log map at the stencil (L[s] at stencil_dy(s), stencil_dx(s)): (dx, dy) = -H^-1 g, with
// g the central first differences and H the second ones; false (no step) when det(H) == 0.
HRNET_FAST_POSE_HD bool dark_offset(const float L[kStencil], float* ox, float* oy) {
  const float gx = 0.5f * (L[1] - L[2]);
  const float gy = 0.5f * (L[3] - L[4]);
  const float dxx = 0.25f * (L[5] - 2.f * L[0] + L[6]);
  const float dyy = 0.25f * (L[7] - 2.f * L[0] + L[8]);
  const float dxy = 0.25f * (L[9] - L[10] - L[11] + L[12]);
  const float det = dxx * dyy - dxy * dxy;
  if (det == 0.f) return false;  // a NaN det takes the step, as the reference's det != 0 does
  *ox = (dyy * gx - dxy * gy) / det;
  *oy = (dxx * gy - dxy * gx) / det;
  return true;
}

// Heatmap coordinate (x, y) of a crop centred at (cx, cy), sw x sh image pixels, mapped to the image.
HRNET_FAST_POSE_HD void to_image(float x, float y, int64_t w, int64_t h, float cx, float cy, float sw, float sh,
                                 float* out_x, float* out_y) {
  const float fw = static_cast<float>(w), fh = static_cast<float>(h);
  *out_x = cx + (x - fw * 0.5f) * (sw / fw);
  *out_y = cy + (y - fh * 0.5f) * (sh / fh);
}

}  // namespace pose
}  // namespace hrnet_fast
