// CUDA heatmap_decode: one warp per (box, joint) heatmap, four per block. The warp's lanes stride over the map,
// merging the flipped crop's map on the fly (pose_math.h's Merged), each keeping its first maximum; a shuffle
// reduction picks the larger value, the smaller index on a tie (the first maximum in row-major order). Lane 0
// applies the classic quarter offset. For DARK, lanes 0..12 each blur one stencil point (pose_math.h's blur_at,
// the Gaussian's taps in shared memory); only where a stencil value is below kDarkNoClampFloor (the log's clamp
// may act, pose_math.h) does the whole warp blur the whole map for its max. Lane 0 writes (x, y, score).
#include "pose_math.h"
#include "pose_ops.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace hrnet_fast {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr unsigned kFull = 0xffffffffu;

template <typename T>
struct DecodeParams {
  const T* heatmaps;         // [K, J, h, w]
  const T* flipped;          // [K, J, h, w] or nullptr
  const int64_t* flip_index; // [J] (with flipped)
  const float* centers;      // [K, 2]
  const float* scales;       // [K, 2]
  float* out;                // [K, J, 3]
  int64_t J, h, w, pairs;    // pairs = K * J
  int blur_kernel;
  bool dark, shift_flipped;
};

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, offset));
  return v;
}

// (value, index) of the first maximum over the warp: larger value, or on a tie the smaller index.
__device__ __forceinline__ void warp_argmax(float& best, int64_t& index) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other = __shfl_xor_sync(kFull, best, offset);
    const int64_t other_index = __shfl_xor_sync(kFull, index, offset);
    if (other > best || (other == best && other_index < index)) {
      best = other;
      index = other_index;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) heatmap_decode_kernel(const DecodeParams<T> p) {
  extern __shared__ float taps[];  // [blur_kernel] DARK's normalised Gaussian
  if (p.dark) {
    double sum = 0.0;
    for (int i = 0; i < p.blur_kernel; ++i) sum += pose::gaussian_weight(p.blur_kernel, i);
    for (int i = threadIdx.x; i < p.blur_kernel; i += kThreads) taps[i] = pose::gaussian_tap(p.blur_kernel, i, sum);
  }
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t kj = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (kj >= p.pairs) return;  // the whole warp leaves together
  const int64_t k = kj / p.J, j = kj % p.J, h = p.h, w = p.w;
  float* o = p.out + kj * 3;
  const T* fl = nullptr;
  if (p.flipped != nullptr) {
    const int64_t source = p.flip_index[j];
    if (source < 0 || source >= p.J) {  // not checked on the host (that would synchronise): a NaN result says so
      if (lane == 0) o[0] = o[1] = o[2] = __int_as_float(0x7fc00000);
      return;
    }
    fl = p.flipped + (k * p.J + source) * h * w;
  }
  const pose::Merged<T> m{p.heatmaps + kj * h * w, fl, h, w, p.shift_flipped};

  float best = -INFINITY;
  int64_t index = lane < h * w ? lane : INT64_MAX;
  bool nan = false;
  for (int64_t i = lane; i < h * w; i += 32) {
    const float v = m.at(i / w, i % w);
    if (v > best) {
      best = v;
      index = i;
    }
    nan = nan || isnan(v);
  }
  if (__any_sync(kFull, nan)) {
    if (lane == 0) o[0] = o[1] = o[2] = __int_as_float(0x7fc00000);
    return;
  }
  warp_argmax(best, index);
  const int64_t px = index % w, py = index / w;
  float x = 0.f, y = 0.f;
  if (best > 0.f) {
    x = static_cast<float>(px);
    y = static_cast<float>(py);
    if (!p.dark) {
      if (px > 1 && px < w - 1 && py > 1 && py < h - 1) {
        x += 0.25f * pose::sign_of(m.at(py, px + 1) - m.at(py, px - 1));
        y += 0.25f * pose::sign_of(m.at(py + 1, px) - m.at(py - 1, px));
      }
    } else if (px > 1 && px < w - 2 && py > 1 && py < h - 2) {
      const int s = lane < pose::kStencil ? lane : 0;
      const float b = pose::blur_at(m, taps, p.blur_kernel, py + pose::stencil_dy(s), px + pose::stencil_dx(s));
      float L;
      if (__all_sync(kFull, b >= pose::kDarkNoClampFloor)) {
        L = logf(b);
      } else {
        float blur_max = -INFINITY;
        for (int64_t i = lane; i < h * w; i += 32) {
          blur_max = fmaxf(blur_max, pose::blur_at(m, taps, p.blur_kernel, i / w, i % w));
        }
        const float v = b * (best / warp_max(blur_max));
        L = logf(v < pose::kLogFloor ? pose::kLogFloor : v);  // NaN stays NaN, as torch.clamp_min keeps it
      }
      float stencil[pose::kStencil], ox, oy;
#pragma unroll
      for (int t = 0; t < pose::kStencil; ++t) stencil[t] = __shfl_sync(kFull, L, t);
      if (pose::dark_offset(stencil, &ox, &oy)) {
        x -= ox;
        y -= oy;
      }
    }
  }
  if (lane == 0) {
    pose::to_image(x, y, w, h, p.centers[k * 2], p.centers[k * 2 + 1], p.scales[k * 2], p.scales[k * 2 + 1], &o[0],
                   &o[1]);
    o[2] = best;
  }
}

}  // namespace

void heatmap_decode_cuda(const DecodeArgs& args) {
  const c10::cuda::CUDAGuard guard(args.out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t pairs = args.heatmaps.size(0) * args.heatmaps.size(1);
  const unsigned blocks = static_cast<unsigned>((pairs + kWarps - 1) / kWarps);
  const size_t shared = args.dark ? args.blur_kernel * sizeof(float) : 0;
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    DecodeParams<T> p{};
    p.heatmaps = args.heatmaps.const_data_ptr<T>();
    p.flipped = args.flipped.defined() ? args.flipped.const_data_ptr<T>() : nullptr;
    p.flip_index = args.flipped.defined() ? args.flip_index.const_data_ptr<int64_t>() : nullptr;
    p.centers = args.centers.const_data_ptr<float>();
    p.scales = args.scales.const_data_ptr<float>();
    p.out = args.out.mutable_data_ptr<float>();
    p.J = args.heatmaps.size(1);
    p.h = args.heatmaps.size(2);
    p.w = args.heatmaps.size(3);
    p.pairs = pairs;
    p.blur_kernel = args.blur_kernel;
    p.dark = args.dark;
    p.shift_flipped = args.shift_flipped;
    heatmap_decode_kernel<T><<<blocks, kThreads, shared, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  const auto dtype = args.heatmaps.scalar_type();
  if (dtype == at::kHalf) {
    launch(c10::Half{});
  } else if (dtype == at::kBFloat16) {
    launch(c10::BFloat16{});
  } else {
    launch(float{});
  }
}

}  // namespace hrnet_fast
