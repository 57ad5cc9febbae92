// CUDA resize_argmax: per output pixel, the argmax over classes of the logits bilinearly resized to the output
// size, without materialising the resized logits.
//
// One thread per output pixel (consecutive threads: consecutive output columns, so their taps are neighbouring
// low-res pixels and the loads of a warp hit a few cache lines per class). The thread computes its row and
// column taps once (csrc/bilinear.h: F.interpolate's fp32 source indices and weights), then walks the classes:
// four loads, the reference's blend order (rows blended from column blends), a running maximum (the first on
// ties; NaN counts as the largest, as torch.argmax) and, for the probability, an online softmax sum rescaled
// whenever the maximum moves. Nothing but the labels (and prob) is written.
#include "bilinear.h"
#include "dispatch.h"
#include "seg_ops.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace hrnet_fast {
namespace {

constexpr int kThreads = 256;

struct Geometry {
  int64_t C, h, w, out_h, out_w, pixels;  // pixels = N * out_h * out_w
  float scale_h, scale_w;                 // linear_scale per dimension
  bool align_corners, channels_last;
};

template <typename T, typename L, bool WITH_PROB>
__global__ void __launch_bounds__(kThreads) resize_argmax_kernel(
    const T* __restrict__ logits,  // [N, C, h, w], or [N, h, w, C] when channels_last
    L* __restrict__ labels,        // [N, out_h, out_w]
    float* __restrict__ prob,      // [N, out_h, out_w] when WITH_PROB
    Geometry g) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < g.pixels; p += stride) {
    const int64_t x = p % g.out_w, row = p / g.out_w, y = row % g.out_h, n = row / g.out_h;
    const LinearTap ty = linear_tap(g.scale_h, y, g.h, g.out_h, g.align_corners);
    const LinearTap tx = linear_tap(g.scale_w, x, g.w, g.out_w, g.align_corners);
    // Offsets of the four taps from the image's first class, and the step between classes.
    const int64_t pix_step = g.channels_last ? g.C : 1;
    const int64_t class_step = g.channels_last ? 1 : g.h * g.w;
    const T* base = logits + n * g.C * g.h * g.w;
    const int64_t o00 = (ty.i0 * g.w + tx.i0) * pix_step, o01 = (ty.i0 * g.w + tx.i1) * pix_step;
    const int64_t o10 = (ty.i1 * g.w + tx.i0) * pix_step, o11 = (ty.i1 * g.w + tx.i1) * pix_step;
    float best = 0.f, sum = 0.f;
    int64_t label = 0;
    for (int64_t c = 0; c < g.C; ++c) {
      const T* z = base + c * class_step;
      const float top = tx.l0 * static_cast<float>(z[o00]) + tx.l1 * static_cast<float>(z[o01]);
      const float bottom = tx.l0 * static_cast<float>(z[o10]) + tx.l1 * static_cast<float>(z[o11]);
      const float v = ty.l0 * top + ty.l1 * bottom;
      const bool take = c == 0 || v > best || (isnan(v) && !isnan(best));
      // A class tied with the maximum adds exactly 1 (also when both are -inf, where exp(v - best) is NaN).
      if (WITH_PROB) {
        sum = c == 0 ? 1.f : (take ? sum * expf(best - v) + 1.f : sum + (v == best ? 1.f : expf(v - best)));
      }
      if (take) {
        best = v;
        label = c;
      }
    }
    labels[p] = static_cast<L>(label);
    if (WITH_PROB) prob[p] = 1.f / sum;
  }
}

template <typename T, typename L>
void launch(const ResizeArgmaxArgs& a, const Geometry& g, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((g.pixels + kThreads - 1) / kThreads,
                                                                  int64_t{1} << 20));
  const T* logits = a.logits.const_data_ptr<T>();
  L* labels = a.labels.mutable_data_ptr<L>();
  if (a.with_prob) {
    resize_argmax_kernel<T, L, true><<<blocks, kThreads, 0, stream>>>(logits, labels,
                                                                       a.prob.mutable_data_ptr<float>(), g);
  } else {
    resize_argmax_kernel<T, L, false><<<blocks, kThreads, 0, stream>>>(logits, labels, nullptr, g);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void resize_argmax_cuda(const ResizeArgmaxArgs& args) {
  const c10::cuda::CUDAGuard guard(args.logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  Geometry g;
  g.C = args.logits.size(1);
  g.h = args.logits.size(2);
  g.w = args.logits.size(3);
  g.out_h = args.labels.size(1);
  g.out_w = args.labels.size(2);
  g.pixels = args.labels.numel();
  g.scale_h = linear_scale(g.h, g.out_h, args.align_corners);
  g.scale_w = linear_scale(g.w, g.out_w, args.align_corners);
  g.align_corners = args.align_corners;
  g.channels_last = args.channels_last;
  const bool byte_labels = args.labels.scalar_type() == at::kByte;
  HRNET_FAST_DISPATCH_FLOAT_TYPES(args.logits.scalar_type(), "resize_argmax_cuda", [&] {
    if (byte_labels) {
      launch<scalar_t, uint8_t>(args, g, stream);
    } else {
      launch<scalar_t, int64_t>(args, g, stream);
    }
  });
}

}  // namespace hrnet_fast
