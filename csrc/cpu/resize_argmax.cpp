// CPU resize_argmax: per output pixel, the argmax over classes of the logits bilinearly resized to the output
// size (F.interpolate's fp32 taps, csrc/bilinear.h), without materialising the resized logits: eager PyTorch
// writes and rereads a [N, C, out_h, out_w] fp32 tensor (40 MB for 19 classes at 512x1024), this keeps two
// column-blended source rows per stripe of output columns in cache (cpu/resize_argmax_kernel.h) and writes only
// the labels (and prob). Output rows are split over OpenMP threads (at::parallel_for). The loops are compiled for
// the baseline ISA and for AVX2 + FMA + F16C, chosen once at run time.
#include "bilinear.h"
#include "cpu/avx2_loops.h"
#include "dispatch.h"
#include "seg_ops.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace hrnet_fast {
namespace {

// Output pixels per argmax block (the running maxima live in stack arrays of this size).
constexpr int64_t kBlock = 64;
// Floats of column blends a thread keeps (two source rows x classes x stripe): about an L2's share per core.
constexpr int64_t kBlendFloats = 64 * 1024;
// Output pixel-classes per parallel task: below about this, waking a second thread costs more than it saves.
constexpr int64_t kGrainWork = 1 << 16;

// One dimension's bilinear taps for every output index (csrc/bilinear.h).
struct Taps {
  std::vector<int32_t> i0, i1;
  std::vector<float> l0, l1;

  Taps(int64_t in, int64_t out, bool align_corners) : i0(out), i1(out), l0(out), l1(out) {
    const float scale = linear_scale(in, out, align_corners);
    for (int64_t d = 0; d < out; ++d) {
      const LinearTap tap = linear_tap(scale, d, in, out, align_corners);
      i0[d] = static_cast<int32_t>(tap.i0);
      i1[d] = static_cast<int32_t>(tap.i1);
      l0[d] = tap.l0;
      l1[d] = tap.l1;
    }
  }
};

template <typename T>
struct View {
  const T* logits;  // [N, C, h, w], or [N, h, w, C] when channels_last
  int64_t C, h, w, out_h, out_w;
  bool channels_last;
  const Taps* rows;  // out_h entries
  const Taps* cols;  // out_w entries
};

namespace baseline {
#define HRNET_FAST_TARGET
#include "cpu/resize_argmax_kernel.h"
#undef HRNET_FAST_TARGET
}  // namespace baseline

#if HRNET_FAST_HAS_AVX2_PATH
namespace avx2 {
#define HRNET_FAST_TARGET __attribute__((target("avx2,fma,f16c")))
#include "cpu/resize_argmax_kernel.h"
#undef HRNET_FAST_TARGET
}  // namespace avx2
#endif

template <typename T, typename L>
void run(const ResizeArgmaxArgs& a) {
  const Taps rows(a.logits.size(2), a.labels.size(1), a.align_corners);
  const Taps cols(a.logits.size(3), a.labels.size(2), a.align_corners);
  View<T> v{a.logits.const_data_ptr<T>(), a.logits.size(1), a.logits.size(2), a.logits.size(3), a.labels.size(1),
            a.labels.size(2), a.channels_last, &rows, &cols};
  L* labels = a.labels.mutable_data_ptr<L>();
  float* prob = a.with_prob ? a.prob.mutable_data_ptr<float>() : nullptr;
  // Columns per stripe: as many as keep two blended source rows within kBlendFloats, whole blocks, at least one.
  const int64_t fit = std::max<int64_t>(kBlock, kBlendFloats / (2 * v.C) / kBlock * kBlock);
  const int64_t stripe = std::min(fit, v.out_w);
  void (*rows_fn)(const View<T>&, L*, float*, int64_t, int64_t, int64_t, float*) =
      baseline::resize_argmax_rows<T, L>;
#if HRNET_FAST_HAS_AVX2_PATH
  if (use_avx2_loops()) rows_fn = avx2::resize_argmax_rows<T, L>;
#endif
  const int64_t row_grain = std::max<int64_t>(1, kGrainWork / (v.C * v.out_w));
  at::parallel_for(0, a.labels.size(0) * v.out_h, row_grain, [&](int64_t begin, int64_t end) {
    std::vector<float> blend(2 * v.C * stripe);
    rows_fn(v, labels, prob, begin, end, stripe, blend.data());
  });
}

}  // namespace

void resize_argmax_cpu(const ResizeArgmaxArgs& args) {
  const bool byte_labels = args.labels.scalar_type() == at::kByte;
  HRNET_FAST_DISPATCH_FLOAT_TYPES(args.logits.scalar_type(), "resize_argmax_cpu", [&] {
    if (byte_labels) {
      run<scalar_t, uint8_t>(args);
    } else {
      run<scalar_t, int64_t>(args);
    }
  });
}

}  // namespace hrnet_fast
