// CUDA multires_fuse: out = relu?(x + bias + sum_j up(low_res[j]) + sum_k same_res[k]) in one pass.
//
// Each thread owns VEC consecutive output elements (memory order, NCHW or NHWC). x, the same_res terms and the
// output move as one VEC-wide load / store (up to 128 bits: 8 halves, 4 floats) when every one of those
// pointers is aligned for it; low-res values (and the per-channel bias of the conv epilogue) are read one by
// one through the element's (n, c, h, w) coordinates, which are computed once per thread and then stepped
// element by element, so the low-res tensors are read in place and never upsampled into memory: nearest at
// (h >> s, w >> s), bilinear as the fp32 blend of the four pixels of F.interpolate's taps (csrc/bilinear.h,
// computed per element; a kernel instantiation per mode keeps the nearest one as lean as before). Sums are fp32
// in the reference's order (x, bias, low_res..., same_res...), rounded once. Elements past the last full
// vector go through the same code with VEC = 1.
#include "bilinear.h"
#include "dispatch.h"
#include "ops.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace hrnet_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxVectorBytes = 16;

// Kernel arguments, fixed size (up to kMaxTerms of each kind), passed by value.
template <typename T>
struct FuseParams {
  const T* x;                     // [N, C, H, W], or [N, H, W, C] when channels_last
  const T* bias;                  // [C] or nullptr
  const T* low[kMaxTerms];        // [N, C, low_h, low_w] (NHWC when channels_last)
  const T* same[kMaxTerms];       // like x
  T* out;                         // like x; may be x itself (in-place epilogue)
  int low_shift[kMaxTerms];       // nearest: s, log2 of the upsampling factor (low_h = H >> s, low_w = W >> s)
  float scale_h[kMaxTerms];       // bilinear: F.interpolate's source-index scales (linear_scale)
  float scale_w[kMaxTerms];
  int64_t low_h[kMaxTerms];
  int64_t low_w[kMaxTerms];
  int n_low;
  int n_same;
  int64_t C, H, W;
  int64_t numel;
  bool channels_last;
  bool relu;
  bool align_corners;             // bilinear
};

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_float(const T* p, float (&f)[VEC]) {
  const Pack<T, VEC> pack = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
  for (int k = 0; k < VEC; ++k) f[k] = static_cast<float>(pack.v[k]);
}

// Coordinates of one output element, stepped through memory order.
struct Coord {
  int64_t n, c, h, w;

  __device__ __forceinline__ Coord(int64_t i, int64_t C, int64_t H, int64_t W, bool channels_last) {
    if (channels_last) {
      c = i % C;
      const int64_t pixel = i / C;
      w = pixel % W;
      h = (pixel / W) % H;
      n = pixel / (W * H);
    } else {
      w = i % W;
      const int64_t row = i / W;
      h = row % H;
      c = (row / H) % C;
      n = row / (H * C);
    }
  }

  __device__ __forceinline__ void next(int64_t C, int64_t H, int64_t W, bool channels_last) {
    if (channels_last) {
      if (++c < C) return;
      c = 0;
      if (++w < W) return;
      w = 0;
      if (++h < H) return;
      h = 0;
      ++n;
    } else {
      if (++w < W) return;
      w = 0;
      if (++h < H) return;
      h = 0;
      if (++c < C) return;
      c = 0;
      ++n;
    }
  }
};

// Offset of low-res pixel (h, w) of term j for the image and channel of output coordinate `at`.
template <typename T>
__device__ __forceinline__ int64_t low_offset(const FuseParams<T>& p, int j, const Coord& at, int64_t h, int64_t w) {
  return p.channels_last ? ((at.n * p.low_h[j] + h) * p.low_w[j] + w) * p.C + at.c
                         : ((at.n * p.C + at.c) * p.low_h[j] + h) * p.low_w[j] + w;
}

// Term j upsampled to output coordinate `at`, in fp32.
template <bool BILINEAR, typename T>
__device__ __forceinline__ float low_res_at(const FuseParams<T>& p, int j, const Coord& at) {
  const T* z = p.low[j];
  if constexpr (BILINEAR) {
    const LinearTap r = linear_tap(p.scale_h[j], at.h, p.low_h[j], p.H, p.align_corners);
    const LinearTap c = linear_tap(p.scale_w[j], at.w, p.low_w[j], p.W, p.align_corners);
    const float top = c.l0 * static_cast<float>(z[low_offset(p, j, at, r.i0, c.i0)]) +
                      c.l1 * static_cast<float>(z[low_offset(p, j, at, r.i0, c.i1)]);
    const float bottom = c.l0 * static_cast<float>(z[low_offset(p, j, at, r.i1, c.i0)]) +
                         c.l1 * static_cast<float>(z[low_offset(p, j, at, r.i1, c.i1)]);
    return r.l0 * top + r.l1 * bottom;
  } else {
    const int s = p.low_shift[j];
    return static_cast<float>(z[low_offset(p, j, at, at.h >> s, at.w >> s)]);
  }
}

// Output elements i .. i + VEC - 1.
template <bool BILINEAR, typename T, int VEC>
__device__ __forceinline__ void fuse_elements(const FuseParams<T>& p, int64_t i) {
  float acc[VEC];
  load_float<T, VEC>(p.x + i, acc);
  if (p.bias != nullptr || p.n_low > 0) {
    Coord at(i, p.C, p.H, p.W, p.channels_last);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      if (p.bias != nullptr) acc[k] += static_cast<float>(p.bias[at.c]);
#pragma unroll
      for (int j = 0; j < kMaxTerms; ++j) {
        if (j >= p.n_low) break;
        acc[k] += low_res_at<BILINEAR>(p, j, at);
      }
      at.next(p.C, p.H, p.W, p.channels_last);
    }
  }
#pragma unroll
  for (int k = 0; k < kMaxTerms; ++k) {
    if (k >= p.n_same) break;
    float d[VEC];
    load_float<T, VEC>(p.same[k] + i, d);
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[e] += d[e];
  }
  Pack<T, VEC> result;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    // `a < 0 ? 0 : a` rather than fmaxf(a, 0): NaN stays NaN, as in torch.relu.
    const float a = p.relu && acc[e] < 0.f ? 0.f : acc[e];
    result.v[e] = static_cast<T>(a);
  }
  *reinterpret_cast<Pack<T, VEC>*>(p.out + i) = result;
}

template <bool BILINEAR, typename T, int VEC>
__global__ void __launch_bounds__(kThreads) multires_fuse_kernel(const FuseParams<T> p) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t vectors = p.numel / VEC;
  for (int64_t v = thread; v < vectors; v += stride) fuse_elements<BILINEAR, T, VEC>(p, v * VEC);
  // The last numel % VEC elements, one per thread.
  if (VEC > 1 && thread < p.numel - vectors * VEC) fuse_elements<BILINEAR, T, 1>(p, vectors * VEC + thread);
}

bool aligned(const void* ptr, int64_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// The widest vector (elements) that x, out and every same_res pointer are aligned for.
template <typename T>
int vector_width(const FuseParams<T>& p) {
  for (int vec = kMaxVectorBytes / static_cast<int>(sizeof(T)); vec > 1; vec /= 2) {
    const int64_t bytes = vec * static_cast<int64_t>(sizeof(T));
    bool ok = aligned(p.x, bytes) && aligned(p.out, bytes);
    for (int k = 0; k < p.n_same; ++k) ok = ok && aligned(p.same[k], bytes);
    if (ok) return vec;
  }
  return 1;
}

// Bilinear taps keep more values live per element: at 8 elements a thread ptxas spills (sm_90), at 4 it does not.
constexpr int kMaxBilinearVec = 4;

template <typename T, int VEC>
void launch(const FuseParams<T>& p, bool bilinear, cudaStream_t stream) {
  const int64_t vectors = std::max<int64_t>(p.numel / VEC, 1);
  // Grid-stride loop: cap the grid, never the work.
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((vectors + kThreads - 1) / kThreads,
                                                                  int64_t{1} << 20));
  bool launched = false;
  if constexpr (VEC <= kMaxBilinearVec) {
    if (bilinear) {
      multires_fuse_kernel<true, T, VEC><<<blocks, kThreads, 0, stream>>>(p);
      launched = true;
    }
  }
  if (!launched) {
    TORCH_INTERNAL_ASSERT(!bilinear, "multires_fuse_cuda: no bilinear kernel of ", VEC, " elements a thread");
    multires_fuse_kernel<false, T, VEC><<<blocks, kThreads, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
FuseParams<T> make_params(const FuseArgs& a) {
  FuseParams<T> p{};
  p.x = a.x.const_data_ptr<T>();
  p.bias = a.bias.defined() ? a.bias.const_data_ptr<T>() : nullptr;
  p.out = a.out.mutable_data_ptr<T>();
  p.n_low = static_cast<int>(a.low_res.size());
  p.n_same = static_cast<int>(a.same_res.size());
  p.C = a.x.size(1);
  p.H = a.x.size(2);
  p.W = a.x.size(3);
  p.align_corners = a.align_corners;
  for (int j = 0; j < p.n_low; ++j) {
    p.low[j] = a.low_res[j].const_data_ptr<T>();
    p.low_h[j] = a.low_res[j].size(2);
    p.low_w[j] = a.low_res[j].size(3);
    if (a.mode == Upsample::kBilinear) {
      p.scale_h[j] = linear_scale(p.low_h[j], p.H, a.align_corners);
      p.scale_w[j] = linear_scale(p.low_w[j], p.W, a.align_corners);
    } else {
      p.low_shift[j] = a.low_shift[j];
    }
  }
  for (int k = 0; k < p.n_same; ++k) p.same[k] = a.same_res[k].const_data_ptr<T>();
  p.numel = a.out.numel();
  p.channels_last = a.channels_last;
  p.relu = a.relu;
  return p;
}

}  // namespace

void multires_fuse_cuda(const FuseArgs& args) {
  TORCH_INTERNAL_ASSERT(args.low_res.size() <= kMaxTerms && args.same_res.size() <= kMaxTerms);
  if (args.out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(args.x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  HRNET_FAST_DISPATCH_FLOAT_TYPES(args.x.scalar_type(), "multires_fuse_cuda", [&] {
    const FuseParams<scalar_t> p = make_params<scalar_t>(args);
    const bool bilinear = args.mode == Upsample::kBilinear;
    switch (bilinear ? std::min(vector_width(p), kMaxBilinearVec) : vector_width(p)) {
      case 8:
        // Only reachable for 2-byte types; a float instantiation would exceed 128 bits.
        if constexpr (sizeof(scalar_t) == 2) return launch<scalar_t, 8>(p, bilinear, stream);
        break;
      case 4: return launch<scalar_t, 4>(p, bilinear, stream);
      case 2: return launch<scalar_t, 2>(p, bilinear, stream);
      default: break;
    }
    launch<scalar_t, 1>(p, bilinear, stream);
  });
}

}  // namespace hrnet_fast
